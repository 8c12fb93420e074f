// hv-testpeer: a small peer process for the multi-process bridge tests (not a user tool).
//
//   hv-testpeer zmq-echo (--connect EP | --bind EP) [--socket dealer|pair|rep|router]
//                        [--messages N] [--timeout-ms MS]
//
// Receives N multipart messages and sends each straight back, then closes and exits 0.
// With --bind it prints "ENDPOINT <resolved endpoint>" on stdout first (bind tcp://127.0.0.1:*).
//   hv-testpeer ring-attention --rank R --world W --dir DIR   (see RingAttentionPeer.swift)
//
// Exit codes: 0 done, 1 ZeroMQ error or timeout (message on stderr), 2 usage error.
import Foundation
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

switch command {
case "zmq-echo":
    do {
        try echo(options)
    } catch {
        fail("\(error)", code: 1)
    }
case "ring-attention":
    do {
        try ringAttentionPeer(options)
    } catch {
        fail("\(error)", code: 1)
    }
case "zmq-version":
    let v = ZMQ.version
    print("\(v.major).\(v.minor).\(v.patch) curve=\(ZMQ.has("curve"))")
default:
    fail("unknown command '\(command)'\n\(usage)", code: 2)
}
