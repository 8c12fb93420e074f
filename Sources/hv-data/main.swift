import HVCommands

DataCommand.main()
