import HVCommands

CkptCommand.main()
