from lapdata.cli import main

main()
