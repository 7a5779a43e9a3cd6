"""python -m client.compare A B: the command lives in client.dedup.compare (the dedup package)."""
import sys

from client.dedup.compare import main

if __name__ == "__main__":
    sys.exit(main())
