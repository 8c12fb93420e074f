import HVCommands
import HVTensor

BLASEnvironment.reexecIfNeeded()
SampleCommand.main()
