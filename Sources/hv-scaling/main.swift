import HVCommands
import HVTensor

BLASEnvironment.reexecIfNeeded()
ScalingCommand.main()
