"""`python -m lapmodel ...` (used by torchrun: `torchrun --nproc-per-node 8 -m lapmodel train ...`)."""

from lapmodel.cli import main

main()
