"""One module per tab; each has ``build(demo, studio)`` laying out its widgets and wiring their events."""
