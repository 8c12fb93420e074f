import Foundation

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
    final class Sink: @unchecked Sendable { var data = Data(); var eof = false; let lock = NSLock() }
    let o = Sink(), e = Sink()
    out.fileHandleForReading.readabilityHandler = { h in let d = h.availableData; o.lock.withLock { o.data.append(d); if d.isEmpty { o.eof = true } } }
    err.fileHandleForReading.readabilityHandler = { h in let d = h.availableData; e.lock.withLock { e.data.append(d); if d.isEmpty { e.eof = true } } }
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(20_000) }
    if p.isRunning { p.terminate(); p.waitUntilExit() }
    p.waitUntilExit()
    // The handlers run asynchronously: on a busy machine the last output can arrive well after
    // the exit. Wait for end-of-file on both pipes (bounded: a grandchild may hold them open).
    let drainDeadline = Date().addingTimeInterval(2)
    while Date() < drainDeadline && !(o.lock.withLock { o.eof } && e.lock.withLock { e.eof }) { usleep(5_000) }
    out.fileHandleForReading.readabilityHandler = nil
    err.fileHandleForReading.readabilityHandler = nil
    return (p.terminationStatus, o.lock.withLock { String(decoding: o.data, as: UTF8.self) }, e.lock.withLock { String(decoding: e.data, as: UTF8.self) })
}
