// swift-tools-version:6.0
import PackageDescription

// The numeric modules skip Swift's run-time exclusivity checks in release builds: tensors are
// classes whose storage pointer is a `var`, and each access in a hot loop paid swift_beginAccess
// (~9% of a sampling step's cycles in perf). Debug builds keep the checks.
let numeric: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

// Dependencies point one way: C shims -> wrappers -> HVTensor -> HVNN -> ... -> HVCommands -> executables.
// Each C module is imported by exactly one Swift module.
let package = Package(
    name: "hv",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "hv-bench", targets: ["hv-bench"]),
        .executable(name: "hv-coord", targets: ["hv-coord"]),
        .executable(name: "hv-sample", targets: ["hv-sample"]),
        .executable(name: "hv-ckpt", targets: ["hv-ckpt"]),
        .executable(name: "hv-data", targets: ["hv-data"]),
        .executable(name: "hv-scaling", targets: ["hv-scaling"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        // System libraries (Debian: libopenblas-dev, libzmq3-dev, libhdf5-dev, libav*-dev).
        .systemLibrary(name: "CHVBLAS", path: "Sources/CHVBLAS"),
        // zmq's pkg-config adds -isystem, which SwiftPM rejects: no pkgConfig, zmq.h is on the default path.
        .systemLibrary(name: "CHVZeroMQ", path: "Sources/CHVZeroMQ"),
        .systemLibrary(name: "CHVHDF5", path: "Sources/CHVHDF5", pkgConfig: "hdf5-serial"),
        .systemLibrary(name: "CHVAV", path: "Sources/CHVAV", pkgConfig: "libavformat libavcodec libswscale libavutil"),

        // Vectorised elementwise kernels (C, compiled per ISA with target_clones). No errno from
        // math functions: with it, a loop calling sqrtf cannot vectorise (AdamW ran 4.5x slower).
        .target(name: "CHVKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]),
        .target(name: "HVTensor", dependencies: ["CHVBLAS", "CHVKernels"], swiftSettings: numeric),
        .target(name: "HVNN", dependencies: ["CHVKernels", "HVTensor"], swiftSettings: numeric),
        .target(name: "HVModel", dependencies: ["HVNN", "HVTensor"], swiftSettings: numeric),
        .target(name: "HVComm", dependencies: ["CHVZeroMQ", "HVTensor"]),
        .target(name: "HVCheckpoint", dependencies: ["CHVHDF5", "HVTensor", "HVNN"]),
        .target(name: "HVData", dependencies: ["CHVAV"]),
        .target(name: "HVParallel", dependencies: ["HVComm", "HVModel", "HVNN", "HVTensor"]),
        .target(name: "HVTrain", dependencies: ["HVModel", "HVNN", "HVTensor", "HVCheckpoint", "HVComm", "HVParallel", "HVData",
                                                .product(name: "Yams", package: "Yams")]),
        .target(name: "HVSampling", dependencies: ["HVModel", "HVNN", "HVTensor", "HVTrain", "HVCheckpoint", "HVData"]),
        .target(name: "HVScaling", dependencies: ["HVModel", "HVTrain", "HVTensor", "HVCheckpoint", "HVData",
                                                  .product(name: "Yams", package: "Yams")]),
        .target(name: "HVCommands", dependencies: [
            "HVTensor", "HVNN", "HVModel", "HVComm", "HVParallel", "HVTrain", "HVCheckpoint", "HVSampling", "HVData", "HVScaling",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "hv-bench", dependencies: ["HVCommands", "HVTensor"]),
        .executableTarget(name: "hv-coord", dependencies: ["HVCommands", "HVTensor"]),
        .executableTarget(name: "hv-sample", dependencies: ["HVCommands", "HVTensor"]),
        .executableTarget(name: "hv-ckpt", dependencies: ["HVCommands"]),
        .executableTarget(name: "hv-data", dependencies: ["HVCommands"]),
        .executableTarget(name: "hv-scaling", dependencies: ["HVCommands", "HVTensor"]),
        // Peer process for the multi-process bridge tests (not a user-facing tool).
        .executableTarget(name: "hv-testpeer", dependencies: ["HVComm", "HVParallel", "HVTensor", "HVTrain"]),

        .target(name: "_HVTestSupport", dependencies: ["HVTensor", "HVTrain"], path: "Sources/_HVTestSupport"),
        .testTarget(name: "HVTensorTests", dependencies: ["HVTensor", "_HVTestSupport"]),
        .testTarget(name: "HVNNTests", dependencies: ["HVNN", "_HVTestSupport"]),
        .testTarget(name: "HVModelTests", dependencies: ["HVModel", "HVNN", "HVCheckpoint", "HVTrain", "_HVTestSupport"],
                    exclude: ["Fixtures"]),
        .testTarget(name: "HVTrainTests", dependencies: ["HVTensor", "HVTrain", "HVModel", "HVNN", "HVSampling", "HVData", "HVCheckpoint", "_HVTestSupport"]),
        .testTarget(name: "IntegrationTests", dependencies: ["_HVTestSupport", "HVCheckpoint", "HVComm", "HVModel", "HVTrain", "HVSampling", "HVTensor"]),
        .testTarget(name: "HVCommTests", dependencies: ["HVComm", "HVTensor"]),
        .testTarget(name: "HVParallelTests", dependencies: ["HVParallel", "HVComm", "HVTensor", "_HVTestSupport"]),
        .testTarget(name: "HVCheckpointTests", dependencies: ["HVCheckpoint", "HVTensor"], exclude: ["Fixtures"]),
        .testTarget(name: "HVDataTests", dependencies: ["HVData"]),
        .testTarget(name: "HVScalingTests", dependencies: ["HVScaling", "HVModel", "HVTrain", "_HVTestSupport"]),
    ]
)
