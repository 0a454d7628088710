from l2smerge.cli import main

main()
