"""lapmodel: the Unsup3D base and the LAP aggregate-and-personalize model, trained from lapdata shards."""

__version__ = "0.1.0"
