"""python -m geoseg: the geoseg command line."""

from geoseg.cli import main

if __name__ == "__main__":
    main()
