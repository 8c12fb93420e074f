import Foundation
@_exported import func HVTrain.readPipe

/// Finds a product executable (e.g. `hv-coord`) built next to the running test bundle, or at
/// the path in `HV_<NAME>` (upper-cased, dashes as underscores).
public func locateExecutable(_ name: String) throws -> URL {
    let key = "HV_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
    if let override = ProcessInfo.processInfo.environment[key] { return URL(fileURLWithPath: override) }
    var dirs: [URL] = []
    if let exe = Bundle.main.executableURL { dirs.append(exe.resolvingSymlinksInPath().deletingLastPathComponent()) }
    dirs.append(URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent())
    for d in dirs where d.path.contains(".xctest") {
        var up = d
        while up.path.contains(".xctest") { up.deleteLastPathComponent() }
        dirs.append(up)
    }
    for d in dirs {
        let c = d.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: c.path) { return c }
    }
    struct NotFound: Error, CustomStringConvertible { let description: String }
    throw NotFound(description: "\(name) not found next to the tests (searched \(dirs.map(\.path))); build it or set \(key)")
}

/// Runs a process to completion (with a time limit); returns (status, stdout, stderr).
public func runProcess(_ exe: URL, _ args: [String], timeout: TimeInterval, cwd: String? = nil) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = exe
    p.arguments = args
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    final class Sink: @unchecked Sendable { var data = Data(); let lock = NSLock() }
    let o = Sink(), e = Sink()
    try p.run()
    // Blocking reader threads, not `readabilityHandler` (its teardown can crash libdispatch on
    // Linux: swift-corelibs-libdispatch#949).
    let readers = [(out, o), (err, e)].map { pipe, sink in readPipe(pipe) { d in sink.lock.withLock { sink.data.append(d) } } }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(20_000) }
    if p.isRunning { p.terminate(); p.waitUntilExit() }
    p.waitUntilExit()
    for r in readers { _ = r.wait(timeout: .now() + 2) }  // end of file once the child's output closes
    return (p.terminationStatus, o.lock.withLock { String(decoding: o.data, as: UTF8.self) }, e.lock.withLock { String(decoding: e.data, as: UTF8.self) })
}
