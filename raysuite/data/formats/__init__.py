"""One module per public dataset: its layout, ingest and synthetic writer."""

from raysuite.data.formats import flare22

FORMATS = {"flare22": flare22}
