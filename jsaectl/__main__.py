from jsaectl.cli import main

main()
