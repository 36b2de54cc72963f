"""`python -m ssrr` runs the command line (so `accelerate launch -m ssrr ...` works too)."""

from ssrr.cli.app import main  # the one place the library hands over to its command-line face

if __name__ == "__main__":
    main()
