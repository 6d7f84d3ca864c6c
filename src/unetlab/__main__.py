from unetlab.cli import main

main()
