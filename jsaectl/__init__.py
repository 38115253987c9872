"""jsaectl: Jacobian sparse autoencoders from the command line.

The library is usable without the CLI: each stage is a function over a config
dataclass (``jsaectl.harvest.harvest(HarvestConfig(...))`` and so on) that reads
and writes zarr stores. Nothing in the library imports typer or rich.
"""

__version__ = "0.1.0"
