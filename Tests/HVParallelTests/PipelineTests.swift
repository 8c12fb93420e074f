import HVModel
import HVParallel
import XCTest

/// Pure tests (no processes): the FLOP-balanced partition and the 1F1B order.
final class PipelineTests: XCTestCase {
    func tiny() -> DiTConfig {
        var c = DiTConfig()
        c.in_channels = 16; c.out_channels = 16; c.patch_size = [1, 2, 2]; c.hidden_size = 64; c.heads_num = 2
        c.mm_double_blocks_depth = 2; c.mm_single_blocks_depth = 2; c.rope_dim_list = [8, 12, 12]
        c.text_states_dim = 64; c.text_states_dim_2 = 32; c.refiner_depth = 1
        return c
    }

    func testPartitionIsContiguousBalancedAndPrinted() throws {
        let c = tiny()
        let p2 = try PipelinePartition(config: c, stages: 2, videoTokens: 48, textTokens: 8)
        XCTAssertEqual(p2.stages, [0..<2, 2..<4])
        XCTAssert(p2.description.hasPrefix("stage 0: stem + double_blocks.0-1 ("), p2.description)
        XCTAssert(p2.description.contains("| stage 1: single_blocks.0-1 + head ("), p2.description)
        // Four near-equal blocks over three stages: the middle stage (no stem, no head) takes two.
        let p3 = try PipelinePartition(config: c, stages: 3, videoTokens: 48, textTokens: 8)
        XCTAssertEqual(p3.stages, [0..<1, 1..<3, 3..<4])
        XCTAssertEqual(p3.flops.max()!, p3.flops[1])
        // Exhaustive check of optimality for p 3 against every cut.
        let f = PipelinePartition.forwardFLOPs(c, videoTokens: 48, textTokens: 8)
        var bestMax = Double.infinity
        for a in 1..<4 { for b in (a + 1)..<4 {
            let costs = [f.blocks[0..<a].reduce(f.stem, +), f.blocks[a..<b].reduce(0, +), f.blocks[b...].reduce(f.head, +)]
            bestMax = min(bestMax, costs.max()!)
        }}
        XCTAssertEqual(p3.flops.max()!, bestMax, accuracy: 1e-6 * bestMax)
        XCTAssertThrowsError(try PipelinePartition(config: c, stages: 5, videoTokens: 48, textTokens: 8)) { e in
            XCTAssert("\(e)".contains("more than the model's 4 blocks"), "\(e)")
        }
    }

    func testOneFOneBOrder() {
        XCTAssertEqual(PipelineSchedule.oneFOneB(stage: 0, stages: 2, microBatches: 3),
                       [.forward(0), .forward(1), .backward(0), .forward(2), .backward(1), .backward(2)])
        XCTAssertEqual(PipelineSchedule.oneFOneB(stage: 1, stages: 2, microBatches: 3),
                       [.forward(0), .backward(0), .forward(1), .backward(1), .forward(2), .backward(2)])
        // More stages than micro-batches: stage 0 runs every forward first.
        XCTAssertEqual(PipelineSchedule.oneFOneB(stage: 0, stages: 4, microBatches: 2),
                       [.forward(0), .forward(1), .backward(0), .backward(1)])
        for p in 1...4 { for m in 1...6 { for s in 0..<p {
            let ops = PipelineSchedule.oneFOneB(stage: s, stages: p, microBatches: m)
            XCTAssertEqual(ops.count, 2 * m)
            for i in 0..<m { XCTAssertLessThan(ops.firstIndex(of: .forward(i))!, ops.firstIndex(of: .backward(i))!) }
        }}}
        XCTAssertEqual(PipelineSchedule.bubbleFraction(stages: 2, microBatches: 4), 0.2, accuracy: 1e-12)
    }

    func testMeshWithPipelineStages() throws {
        let m = try DeviceMesh(world: 8, cp: 2, pp: 2, rank: 5)   // (dp 1, pp 0, cp 1)
        XCTAssertEqual([m.dp, m.cp, m.pp, m.dpRank, m.ppRank, m.cpRank], [2, 2, 2, 1, 0, 1])
        XCTAssertEqual(m.cpGroup, [4, 5])
        XCTAssertEqual(m.ppGroup, [5, 7])
        XCTAssertEqual(m.stageGroup, [0, 1, 4, 5])
        XCTAssertEqual(m.ranks(ofStage: 1), [2, 3, 6, 7])
        // Every rank's stage group is exactly the ranks of its stage.
        let all = try (0..<8).map { try DeviceMesh(world: 8, cp: 2, pp: 2, rank: $0) }
        for r in all { XCTAssertEqual(r.stageGroup, all.filter { $0.ppRank == r.ppRank }.map(\.rank)) }
        XCTAssertEqual(try DeviceMesh(world: 6, cp: 1, pp: 3, rank: 4).stageGroup, [1, 4])
        XCTAssertEqual(try DeviceMesh(world: 3, cp: 1, rank: 2).stageGroup, [0, 1, 2])
        XCTAssertEqual(try DeviceMesh(world: 4, cp: 1, pp: 2, rank: 3).ppGroup, [2, 3])
        XCTAssertThrowsError(try DeviceMesh(world: 6, cp: 1, pp: 4, rank: 0)) { e in
            XCTAssert("\(e)".contains("pipeline_parallel 4") && "\(e)".contains("6 slots"), "\(e)")
        }
    }
}
