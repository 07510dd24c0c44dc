import sys
from pathlib import Path

# test helper modules (nnunet_helpers, bloch, fake_datasets) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))
