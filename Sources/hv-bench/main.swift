import HVCommands
import HVTensor

BLASEnvironment.reexecIfNeeded()
BenchCommand.main()
