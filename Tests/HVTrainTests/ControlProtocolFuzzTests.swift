import Foundation
import HVTensor
import HVTrain
import XCTest

/// Random and mutated control-plane messages against `ControlMessage.decode`.
final class ControlProtocolFuzzTests: XCTestCase {

    func samples() -> [ControlMessage] {
        var hello = ControlMessage(type: .hello)
        hello.rank = 1; hello.endpoint = "tcp://127.0.0.1:5555"; hello.host = "h"; hello.pid = 42
        var start = ControlMessage(type: .start)
        start.peers = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
        var metrics = ControlMessage(type: .metrics)
        metrics.rank = 0; metrics.step = 3; metrics.loss = 0.5; metrics.lr = 1e-3; metrics.grad_norm = 0.2
        var saved = ControlMessage(type: .saved)
        saved.rank = 0; saved.step = 5; saved.path = "/tmp/x/checkpoints/step-0000005"
        var hb = ControlMessage(type: .heartbeat)
        hb.rank = 1; hb.step = 7
        var failed = ControlMessage(type: .failed)
        failed.rank = 1; failed.error = "boom"
        return [hello, start, metrics, saved, hb, failed, ControlMessage(type: .abort), ControlMessage(type: .stop), ControlMessage(type: .ping)]
    }

    /// 30,000 mutated or random messages: decode never crashes, and whatever it accepts is
    /// within bounds (rank in the world, bounded strings, endpoints that look like endpoints).
    func testDecodeOnRandomAndMutatedMessages() {
        let seed: UInt64 = 10
        var rng = HVRandom(seed: seed)
        let valid = samples().map { $0.encoded() }
        for v in valid { XCTAssertNoThrow(try ControlMessage.decode(v, worldSize: 2), String(decoding: v, as: UTF8.self)) }
        let tokens = Array("{}[]\":,0123456789-eE.tfnul \\".utf8) + [0, 0xFF, 0xC3]
        var accepted = 0
        for i in 0..<30_000 {
            var m = valid[i % valid.count]
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: m[Int.random(in: 0..<m.count, using: &rng)] = tokens.randomElement(using: &rng)!
            case 1: m = Array(m.prefix(Int.random(in: 0..<m.count, using: &rng)))
            case 2: m.insert(contentsOf: (0..<Int.random(in: 1...6, using: &rng)).map { _ in tokens.randomElement(using: &rng)! },
                             at: Int.random(in: 0...m.count, using: &rng))
            case 3: m = (0..<Int.random(in: 0...80, using: &rng)).map { _ in tokens.randomElement(using: &rng)! }
            default:
                // Replace a number with an out-of-range one.
                let text = String(decoding: m, as: UTF8.self)
                m = Array(text.replacingOccurrences(of: ":1", with: [":-1", ":99", ":1e300", ":9223372036854775807"].randomElement(using: &rng)!).utf8)
            }
            do {
                let d = try ControlMessage.decode(m, worldSize: 2)
                accepted += 1
                if let r = d.rank { XCTAssert((0..<2).contains(r), "seed \(seed) message \(i)") }
                if let p = d.peers { XCTAssert(p.count <= 2 && p.allSatisfy { $0.hasPrefix("tcp://") || $0.hasPrefix("ipc://") || $0.hasPrefix("inproc://") }) }
                if let s = d.step { XCTAssertGreaterThanOrEqual(s, 0) }
            } catch {
                XCTAssert("\(error)".hasPrefix("control plane:"), "\(error)")
            }
        }
        XCTAssertGreaterThan(accepted, 1_000)
    }

    func testOversizedAndOutOfRangeMessagesAreRejected() {
        XCTAssertThrowsError(try ControlMessage.decode([UInt8](repeating: 0x20, count: ControlMessage.maxBytes + 1), worldSize: 2)) {
            XCTAssert("\($0)".contains("limit"), "\($0)")
        }
        var hello = ControlMessage(type: .hello)
        hello.rank = 0; hello.endpoint = "tcp://" + String(repeating: "a", count: 600)
        XCTAssertThrowsError(try ControlMessage.decode(hello.encoded(), worldSize: 2))
        hello.endpoint = "http://evil"
        XCTAssertThrowsError(try ControlMessage.decode(hello.encoded(), worldSize: 2))
        var err = ControlMessage(type: .failed)
        err.rank = 0; err.error = String(repeating: "x", count: 70_000)
        XCTAssertThrowsError(try ControlMessage.decode(err.encoded(), worldSize: 2))
        var start = ControlMessage(type: .start)
        start.peers = ["tcp://a:1", "tcp://b:2", "tcp://c:3"]
        XCTAssertThrowsError(try ControlMessage.decode(start.encoded(), worldSize: 2))
    }
}
