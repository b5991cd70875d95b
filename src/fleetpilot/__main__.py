from fleetpilot.cli import main

main()
