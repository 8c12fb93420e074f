import Foundation
import HVCheckpoint
import HVSampling
import HVTensor
import HVTrain
import XCTest

/// Checkpoint save / load / verify in one process (the multi-process cases are in IntegrationTests).
final class CheckpointingTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-ckpt-unit-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func tinyRun(steps: Int) throws -> RunConfig {
        var cfg = try RunConfig.load(path: repoRoot.appendingPathComponent("configs/runs/tiny.yaml").path)
        cfg.train.steps = steps
        return cfg
    }

    /// A trainer after 3 steps and a saved checkpoint of it.
    func savedRun(stage: Int = 0) throws -> (Trainer, String) {
        let a = try Trainer(config: try tinyRun(steps: 6), zeroStage: stage)
        for _ in 0..<3 { _ = try a.trainStep() }
        let dir = try Checkpointing.save(a, runDir: scratch.path, keep: 2)
        return (a, dir)
    }

    func assertSameState(_ a: Trainer, _ b: Trainer, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.step, b.step, file: file, line: line)
        for ((n, p), (_, q)) in zip(a.parameters, b.parameters) { XCTAssertEqual(p.scalars, q.scalars, n, file: file, line: line) }
        XCTAssertEqual(a.engine.exp_avg, b.engine.exp_avg, file: file, line: line)
        XCTAssertEqual(a.engine.exp_avg_sq, b.engine.exp_avg_sq, file: file, line: line)
    }

    /// A VAE run's checkpoint given where a DiT's is expected (resume, hv-sample) is refused up
    /// front, saying what it is and how to use it, instead of building a default-config DiT.
    func testVAECheckpointIsNotTakenForADiT() throws {
        var vcfg = try VAERunConfig.load(path: repoRoot.appendingPathComponent("configs/runs/vae-tiny.yaml").path)
        vcfg.data.count = 4; vcfg.data.held_out = 1
        let vae = try VAETrainer(config: vcfg)
        _ = try vae.trainStep()
        let dir = try Checkpointing.save(vae, runDir: scratch.path + "/vae-run", keep: 1)
        let dit = try Trainer(config: try tinyRun(steps: 2))
        for attempt in [{ try Checkpointing.load(dit, from: dir) }, { _ = try TextToVideo.load(dir) },
                        { _ = try TextToVideo.load(self.scratch.path + "/vae-run") }] {
            XCTAssertThrowsError(try attempt()) { e in
                XCTAssert("\(e)".contains("is a vae checkpoint, not a DiT checkpoint") && "\(e)".contains("export-vae"), "\(e)")
            }
        }
    }

    /// Save + load into a fresh trainer restores every value; the next step's loss is identical.
    func testSaveLoadIsExact() throws {
        for stage in [0, 3] {
            let (a, dir) = try savedRun(stage: stage)
            let b = try Trainer(config: try tinyRun(steps: 6), zeroStage: stage)
            try Checkpointing.load(b, from: dir)
            if stage == 0 { assertSameState(a, b) }
            XCTAssertEqual(try a.trainStep().loss, try b.trainStep().loss, "stage \(stage)")
            try FileManager.default.removeItem(at: scratch)
        }
    }

    /// Flipped bytes inside one dataset: verify and load fail naming the file and the dataset.
    func testCorruptedDatasetIsNamed() throws {
        let (_, dir) = try savedRun()
        let path = dir + "/rank-00000.h5", dataset = "units/double_blocks.0/exp_avg_sq"
        let f = try H5File(path: path, mode: .readOnly)
        let offset = try XCTUnwrap(try f.dataset(dataset).fileOffset())
        let count = try f.dataset(dataset).count()
        try f.close()
        let h = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        try h.seek(toOffset: UInt64(offset + 4 * (count / 2)))
        try h.write(contentsOf: Data([0x12, 0x34, 0x56]))
        try h.close()
        XCTAssertThrowsError(try Checkpointing.verify(dir)) { e in
            XCTAssert("\(e)".contains("rank-00000.h5") && "\(e)".contains(dataset) && "\(e)".contains("checksum mismatch"), "\(e)")
        }
        let b = try Trainer(config: try tinyRun(steps: 6))
        XCTAssertThrowsError(try Checkpointing.load(b, from: dir)) { e in
            XCTAssert("\(e)".contains("rank-00000.h5") && "\(e)".contains(dataset), "\(e)")
        }
    }

    /// A model tensor the checkpoint lacks, or holds with another shape, is named with both
    /// shapes (loads find tensors by official name, whatever unit layout saved them).
    func testMissingOrMisshapenTensorIsNamed() throws {
        let (_, dir) = try savedRun()
        let original = try CheckpointManifest.read(directory: dir)
        func load(_ edit: (inout CheckpointManifest.TensorEntry) -> Void) throws -> String {
            var m = original
            let u = m.units.firstIndex { $0.name == "outer" }!, t = m.units[u].tensors.firstIndex { $0.name == "final_layer.linear.weight" }!
            edit(&m.units[u].tensors[t])
            try m.encoded().write(to: URL(fileURLWithPath: dir + "/manifest.json"))
            var message = ""
            XCTAssertThrowsError(try Checkpointing.load(try Trainer(config: try tinyRun(steps: 6)), from: dir)) { message = "\($0)" }
            return message
        }
        let missing = try load { $0.name = "final_layer.linear.weight_renamed" }
        XCTAssert(missing.contains("manifest.json") && missing.contains("no tensor final_layer.linear.weight "), missing)
        let shape = try load { $0.shape = [$0.shape.reduce(1, *)] }
        XCTAssert(shape.contains("tensor final_layer.linear.weight is [") && shape.contains("in this model"), shape)
    }

    /// Manifest values out of range (a hand-edited or corrupted manifest.json) are errors naming
    /// the manifest, never a trap or a huge allocation, and never shards that silently read as
    /// zeros. Every case here crashed or loaded all-zero weights before.
    func testManifestValuesOutOfRangeAreErrors() throws {
        let (_, dir) = try savedRun()
        let original = try CheckpointManifest.read(directory: dir)
        let u = original.units.firstIndex { $0.name == "outer" }!
        let edits: [(String, (inout CheckpointManifest) -> Void)] = [
            ("offset", { $0.units[u].tensors[0].offset = $0.units[u].count }),
            ("negative size", { $0.units[u].tensors[0].shape = [-1, 4] }),
            ("too large", { $0.units[u].tensors[0].shape = [1 << 40, 1 << 40] }),
            ("count -1", { $0.units[u].count = -1 }),
            ("count 4611686018427387904", { $0.units[u].count = 1 << 62; $0.units[u].shards[0].end = 1 << 62 }),
            ("shards cover", { $0.units[u].shards = [] }),
            ("covers", { $0.units[u].shards[0].end = -5 }),
            ("world_size 0", { $0.world_size = 0 }),
            ("outside world_size", { $0.units[u].shards[0].rank = 7 }),
            ("shard file", { $0.units[u].shards[0].file = "../../etc/passwd" }),
            ("listed twice", { $0.units.append($0.units[u]) }),
            ("world_size 100000", { $0.world_size = 100_000 }),
        ]
        for (fragment, edit) in edits {
            var m = original
            edit(&m)
            try m.encoded().write(to: URL(fileURLWithPath: dir + "/manifest.json"))
            for attempt in [{ _ = try Checkpointing.verify(dir) }, { _ = try TextToVideo.load(dir) },
                            { try Checkpointing.load(try Trainer(config: try self.tinyRun(steps: 6)), from: dir) }] {
                XCTAssertThrowsError(try attempt(), fragment) { e in
                    XCTAssert("\(e)".contains("manifest.json") && "\(e)".contains(fragment), "\(fragment): \(e)")
                }
            }
        }
    }

    /// hv-sample builds the model from the run config saved in the checkpoint: it is validated
    /// first (heads_num 0 divided by zero before), and the sampling options are range-checked.
    func testSavedRunConfigAndSamplingOptionsAreChecked() throws {
        let (_, dir) = try savedRun()
        var m = try CheckpointManifest.read(directory: dir)
        let good = m.run_config
        m.run_config = good.replacingOccurrences(of: "\"heads_num\":", with: "\"heads_num\":0,\"x_heads\":")
        XCTAssertNotEqual(m.run_config, good)
        try m.encoded().write(to: URL(fileURLWithPath: dir + "/manifest.json"))
        XCTAssertThrowsError(try TextToVideo.load(dir)) { e in
            XCTAssert("\(e)".contains("manifest.json (run_config)") && "\(e)".contains("model.heads_num"), "\(e)")
        }
        m.run_config = "{not json"
        try m.encoded().write(to: URL(fileURLWithPath: dir + "/manifest.json"))
        XCTAssertThrowsError(try TextToVideo.load(dir)) { e in
            XCTAssert("\(e)".contains("manifest.json") && "\(e)".contains("run_config does not parse"), "\(e)")
        }
        m.run_config = good
        try m.encoded().write(to: URL(fileURLWithPath: dir + "/manifest.json"))
        let model = try TextToVideo.load(dir)
        var o = model.run.samplingDefaults
        o.steps = 2
        XCTAssertNoThrow(try model.sampleLatents(prompt: "a red square moving right", options: o))
        let edits: [(String, (inout SamplingOptions) -> Void)] = [
            ("--steps", { $0.steps = -1 }), ("--steps", { $0.steps = 0 }), ("--shift", { $0.shift = 0 }), ("--shift", { $0.shift = .nan }),
            ("--guidance", { $0.guidance = 0 }), ("--guidance", { $0.guidance = .infinity }), ("--frames", { $0.latentFrames = 0 }),
            ("--height", { $0.latentHeight = -2 }), ("too large", { $0.latentWidth = 1 << 40 }),
        ]
        for (flag, edit) in edits {
            var bad = o
            edit(&bad)
            XCTAssertThrowsError(try model.sampleLatents(prompt: "a red square moving right", options: bad), flag) { e in
                XCTAssert("\(e)".contains(flag), "\(flag): \(e)")
            }
        }
    }

    /// Every layout hv writes passes the manifest checks: a unit over fewer ranks than values
    /// (empty shards), over a pipeline stage's ranks (not starting at 0), and over all ranks.
    func testManifestLayoutsHvWritesAreValid() {
        let small = Checkpointing.unitEntry(name: "small", params: [("a", Tensor(zeros: [3]))], ranks: Array(0..<8))
        XCTAssert(small.shards.contains { $0.start == $0.end }, "some shards are empty")
        let stage = Checkpointing.unitEntry(name: "stage1", params: [("b", Tensor(zeros: [4, 5])), ("c", Tensor(zeros: [7]))], ranks: [6, 7])
        let all = Checkpointing.unitEntry(name: "outer", params: [("d", Tensor(zeros: [2, 2, 2]))], ranks: Array(0..<8))
        let m = CheckpointManifest(step: 3, samples_seen: 12, tokens_seen: 96, world_size: 8, zero_stage: 3, run_config: "{}", model_config: "{}",
                                   data_position: .init(epoch: 0, offset: 1, count: 4, seed: 0), optimizer_step: 3, rng: "", units: [small, stage, all])
        XCTAssertNil(m.problem())
        var bad = m
        bad.world_size = 7
        XCTAssertNotNil(bad.problem(), "rank 7 is outside a world of 7")
    }

    /// A data position out of range is refused on resume (it trapped in the data order).
    func testBadDataPositionIsRefusedOnResume() throws {
        let (_, dir) = try savedRun()
        let original = try CheckpointManifest.read(directory: dir)
        for edit: (inout CheckpointManifest.DataPosition) -> Void in [{ $0.offset = $0.count + 1 }, { $0.epoch = -1 }, { $0.count = 0 }] {
            var m = original
            edit(&m.data_position)
            try m.encoded().write(to: URL(fileURLWithPath: dir + "/manifest.json"))
            XCTAssertThrowsError(try Checkpointing.load(try Trainer(config: try tinyRun(steps: 6)), from: dir)) { e in
                XCTAssert("\(e)".contains("manifest.json") && "\(e)".contains("data_position"), "\(e)")
            }
        }
    }

    /// A dataset whose hv checksums were stripped (and that has no Fletcher-32 filter either)
    /// cannot be verified, so it is refused rather than trusted.
    func testStrippedChecksumsAreRefused() throws {
        let (_, dir) = try savedRun()
        let path = dir + "/rank-00000.h5", dataset = "units/outer/weights"
        do {
            let f = try H5File(path: path, mode: .readWrite)
            for attr in ["hv_checksum", "hv_checksum_block", "hv_checksums"] { try f.dataset(dataset).deleteAttribute(attr) }
            try f.close()
        }
        XCTAssertThrowsError(try Checkpointing.verify(dir)) { e in
            XCTAssert("\(e)".contains("rank-00000.h5") && "\(e)".contains(dataset) && "\(e)".contains("cannot be verified"), "\(e)")
        }
    }

    /// Checkpoints written before hv's own checksums (chunked datasets with HDF5's Fletcher-32
    /// filter) still verify and load.
    func testLegacyFletcher32CheckpointLoads() throws {
        let (a, dir) = try savedRun()
        let path = dir + "/rank-00000.h5", old = dir + "/old.h5"
        do {
            let src = try H5File(path: path, mode: .readOnly), dst = try H5File(path: old, mode: .create)
            for attr in ["rank", "world_size", "step"] { try dst.setAttribute(attr, src.attribute(attr)) }
            for unit in try src.group("units").children() {
                let g = try src.group("units/" + unit), out = try dst.createGroup("units/" + unit)
                for ds in ["weights", "exp_avg", "exp_avg_sq"] {
                    let v = try g.read(ds, as: Float.self)
                    try out.write(ds, v, shape: [v.count], options: H5DatasetOptions(fletcher32: !v.isEmpty))
                }
                for attr in ["start", "end"] { try out.setAttribute(attr, g.attribute(attr)) }
            }
            try src.close(); try dst.close()
        }
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: old, toPath: path)
        let f = try H5File(path: path, mode: .readOnly)
        XCTAssertEqual(try ChecksummedArray.protection(f.dataset("units/outer/weights")), "fletcher32")
        try f.close()
        XCTAssertNoThrow(try Checkpointing.verify(dir))
        let b = try Trainer(config: try tinyRun(steps: 6))
        try Checkpointing.load(b, from: dir)
        assertSameState(a, b)
    }
}
