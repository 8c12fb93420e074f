import HVComm
import HVParallel
import HVTensor
import XCTest
import _HVTestSupport

/// Pure tests (no processes): the dp x cp mesh, and ring attention on a ring of one.
final class DeviceMeshTests: XCTestCase {
    func testMeshGroupsAndValidation() throws {
        let m = try DeviceMesh(world: 6, cp: 3, rank: 4)
        XCTAssertEqual([m.dp, m.cp, m.dpRank, m.cpRank], [2, 3, 1, 1])
        XCTAssertEqual(m.cpGroup, [3, 4, 5])
        XCTAssertEqual(try DeviceMesh(world: 4, cp: 1, rank: 3).cpGroup, [3])
        XCTAssertThrowsError(try DeviceMesh(world: 4, cp: 3, rank: 0)) { e in
            XCTAssert("\(e)".contains("context_parallel 3") && "\(e)".contains("4 slots"), "\(e)")
        }
        XCTAssertThrowsError(try DeviceMesh(world: 4, cp: 0, rank: 0))
    }

    /// cp = 1 (no messages): the op's local-text + own-block merge and its backward equal
    /// single-process attention over [video | text] with the text mask.
    func testRingOfOneEqualsFullAttention() throws {
        let B = 2, H = 2, S = 11, T = 5, D = 8
        let qv = randomTensor([B, H, S + T, D], seed: 1), k = randomTensor([B, H, S, D], seed: 2), v = randomTensor([B, H, S, D], seed: 3)
        let kt = randomTensor([B, H, T, D], seed: 4), vt = randomTensor([B, H, T, D], seed: 5)
        let g = randomTensor([B, H, S + T, D], seed: 6)
        let mask = Tensor((0..<B).flatMap { b in (0..<T).map { Float($0 < T - 1 - b ? 1 : 0) } }, shape: [B, T])
        for t in [qv, k, v, kt, vt] { t.requiresGrad = true }
        let ring = RingAttention(comm: SoloCommunicator())
        let out = try ring.attention(q: qv, k: k, v: v, shardLengths: [S], localK: kt, localV: vt, localMask: mask)
        out.backward(g)
        let grads = [qv, k, v, kt, vt].map { $0.grad! }

        let leaves = [qv, k, v, kt, vt].map { t -> Tensor in let d = t.detached(); d.requiresGrad = true; return d }
        let ref = Tensor.scaledDotProductAttention(leaves[0], Tensor.concat([leaves[1], leaves[3]], axis: 2),
                                                   Tensor.concat([leaves[2], leaves[4]], axis: 2),
                                                   keyMask: Tensor.concat([Tensor(repeating: 1, shape: [B, S]), mask], axis: 1))
        ref.backward(g)
        XCTAssertLessThan(maxAbsDiff(out, ref), 1e-5)
        for (i, name) in ["dq", "dk", "dv", "dk text", "dv text"].enumerated() {
            XCTAssertLessThan(maxAbsDiff(grads[i], leaves[i].grad!), 1e-5, name)
        }
    }
}
