from roder_analyticsd.cli import main

main()
