import HVCommands
import HVTensor

BLASEnvironment.reexecIfNeeded()
CoordCommand.main()
