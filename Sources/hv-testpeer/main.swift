// hv-testpeer: a small peer process for the multi-process bridge tests (not a user tool).
//
//   hv-testpeer zmq-echo (--connect EP | --bind EP) [--socket dealer|pair|rep|router]
//                        [--messages N] [--timeout-ms MS]
//
// Receives N multipart messages and sends each straight back, then closes and exits 0.
// With --bind it prints "ENDPOINT <resolved endpoint>" on stdout first (bind tcp://127.0.0.1:*).
//
//   hv-testpeer zmq-rogue --connect EP [--socket push|dealer] [--messages N] [--seed S]
//                         [--curve-server-key Z85] [--plain-user U --plain-password P]
//
// A rogue peer: sends N seeded garbage messages (random frame counts and sizes, mutated hv
// headers and JSON, some frames of 2 MiB) without waiting, then lingers 1 s and exits 0. With
// --curve-server-key it speaks CURVE with a fresh key pair of its own (right server key, wrong
// client key); without, it has no keys at all. Prints "SENT n" (messages queued).
//
//   hv-testpeer ring-attention --rank R --world W --dir DIR   (see RingAttentionPeer.swift)
//   hv-testpeer ring-attention-dead-peer --rank R --dir DIR --phase forward|backward   (ditto)
//   hv-testpeer zero-buckets --rank R --world W --dir DIR --config RUN.yaml --stage S
//                            [--accum A] [--recompute 0|1] [--steps N] [--batch B]   (see ZeroEnginePeer.swift)
//
// Exit codes: 0 done, 1 ZeroMQ error or timeout (message on stderr), 2 usage error.
import Foundation
import HVTensor
import HVComm

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("hv-testpeer: \(message)\n".utf8))
    exit(code)
}

let usage = "usage: hv-testpeer zmq-echo (--connect EP | --bind EP) [--socket dealer|pair|rep|router] [--messages N] [--timeout-ms MS]"

var arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else { fail(usage, code: 2) }
arguments.removeFirst()

var options: [String: String] = [:]
while !arguments.isEmpty {
    let key = arguments.removeFirst()
    guard key.hasPrefix("--"), !arguments.isEmpty else { fail("bad argument '\(key)'\n\(usage)", code: 2) }
    options[String(key.dropFirst(2))] = arguments.removeFirst()
}

func echo(_ options: [String: String]) throws {
    let socketType: ZMQSocketType
    switch options["socket"] ?? "dealer" {
    case "dealer": socketType = .dealer
    case "pair": socketType = .pair
    case "rep": socketType = .rep
    case "router": socketType = .router
    case let other: fail("unknown socket type '\(other)'", code: 2)
    }
    guard let messages = Int(options["messages"] ?? "1"), messages >= 0,
          let timeout = Int(options["timeout-ms"] ?? "10000") else { fail(usage, code: 2) }

    let context = try ZMQContext(defaultLingerMilliseconds: 2000)
    defer { context.close() }
    let socket = try context.makeSocket(socketType)
    defer { socket.close() }
    try socket.setReceiveTimeout(milliseconds: timeout)
    try socket.setSendTimeout(milliseconds: timeout)

    if let endpoint = options["connect"] {
        try socket.connect(endpoint)
    } else if let endpoint = options["bind"] {
        try socket.bind(endpoint)
        FileHandle.standardOutput.write(Data("ENDPOINT \(try socket.lastEndpoint)\n".utf8))
    } else {
        fail("need --connect or --bind\n\(usage)", code: 2)
    }

    for _ in 0..<messages {
        // A ROUTER's first frame is the sender's routing id; echoing it back routes the reply.
        let frames = try socket.receiveMultipart()
        try socket.sendMultipart(frames)
    }
}


func rogue(_ options: [String: String]) throws {
    guard let endpoint = options["connect"], let messages = Int(options["messages"] ?? "200"),
          let seed = UInt64(options["seed"] ?? "1") else { fail(usage, code: 2) }
    let type: ZMQSocketType = options["socket"] == "dealer" ? .dealer : .push
    var rng = HVRandom(seed: seed)
    let context = try ZMQContext(defaultLingerMilliseconds: 1000)
    defer { context.close() }
    let socket = try context.makeSocket(type)
    defer { socket.close() }
    try socket.setSendTimeout(milliseconds: 100)
    if let user = options["plain-user"] {
        try socket.setBytesOption(46 /* ZMQ_PLAIN_PASSWORD */, Array((options["plain-password"] ?? "").utf8))
        try socket.setBytesOption(45 /* ZMQ_PLAIN_USERNAME */, Array(user.utf8))
    }
    if let server = options["curve-server-key"] {
        try socket.setCurveClient(keys: try ZMQ.curveKeyPair(), serverPublicKey: server)
    }
    try socket.connect(endpoint)
    usleep(200_000)
    let header = WireHeader(source: 1, kind: .reduceScatter, dtype: .float32, sequence: 1, chunk: 0, count: 4).bytes
    let json = Array(#"{"type":"metrics","rank":0,"step":1,"loss":0.5}"#.utf8)
    var sent = 0
    for _ in 0..<messages {
        var frames: [[UInt8]] = []
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            var f: [UInt8]
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: f = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1: f = header
            case 2: f = json
            case 3: f = [UInt8](repeating: 0x41, count: Int.random(in: 0...1, using: &rng) == 0 ? 2 << 20 : 16)
            default: f = Int.random(in: 0...1, using: &rng) == 0 ? header : json
            }
            if !f.isEmpty && f.count < 1000 {
                for _ in 0..<Int.random(in: 0...3, using: &rng) { f[Int.random(in: 0..<f.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng) }
                if Int.random(in: 0...3, using: &rng) == 0 { f = Array(f.prefix(Int.random(in: 0..<f.count, using: &rng))) }
            }
            frames.append(f)
        }
        if (try? socket.sendMultipart(frames, dontWait: true)) != nil { sent += 1 }
    }
    FileHandle.standardOutput.write(Data("SENT \(sent)\n".utf8))
    usleep(1_000_000)
}

switch command {
case "zmq-rogue":
    do { try rogue(options) } catch { fail("\(error)", code: 1) }
case "zmq-echo":
    do {
        try echo(options)
    } catch {
        fail("\(error)", code: 1)
    }
case "ring-attention-dead-peer":
    do {
        try ringAttentionDeadPeer(options)
    } catch {
        fail("\(error)", code: 1)
    }
case "ring-attention":
    do {
        try ringAttentionPeer(options)
    } catch {
        fail("\(error)", code: 1)
    }
case "zero-buckets":
    do {
        try zeroBucketsPeer(options)
    } catch {
        fail("\(error)", code: 1)
    }
case "zmq-version":
    let v = ZMQ.version
    print("\(v.major).\(v.minor).\(v.patch) curve=\(ZMQ.has("curve"))")
default:
    fail("unknown command '\(command)'\n\(usage)", code: 2)
}
