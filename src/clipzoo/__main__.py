from clipzoo.cli import main

main()
