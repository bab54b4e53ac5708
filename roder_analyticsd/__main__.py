from roder_analyticsd.cli import main

# guarded: worker processes re-import the main module under another name
if __name__ == "__main__":
    main()
