import Foundation
import HVCheckpoint
import XCTest

/// Official <-> diffusers names, against a golden list dumped once from diffusers
/// (scripts/dev/make_diffusers_names.py) and the official weights of the DiT parity fixture A.
final class DiffusersNamingTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Official weights of Tests/HVModelTests/Fixtures/dit_parity_a.h5 (group `weights`), sorted by name.
    func officialA() throws -> [NamedTensor] {
        let f = try H5File(path: Self.repo.appendingPathComponent("Tests/HVModelTests/Fixtures/dit_parity_a.h5").path, mode: .readOnly)
        defer { try? f.close() }
        let g = try f.group("weights")
        return try g.children().map { n in
            let ds = try g.dataset(n)
            return NamedTensor(name: n, shape: try ds.shape(), values: try ds.read(as: Float.self))
        }
    }

    /// The mapping gives exactly diffusers' state-dict names and shapes for config A.
    func testNamesAndShapesMatchDiffusersGoldenList() throws {
        let data = try Data(contentsOf: Self.repo.appendingPathComponent("Tests/HVCheckpointTests/Fixtures/diffusers_names_a.json"))
        let golden = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [[Any]])
        var expected: [String: [Int]] = [:]
        for e in golden { expected[e[0] as! String] = e[1] as? [Int] }
        XCTAssertEqual(expected.count, golden.count)
        let mapped = try DiffusersNaming.officialToDiffusers(try officialA())
        var got: [String: [Int]] = [:]
        for t in mapped { XCTAssertNil(got.updateValue(t.shape, forKey: t.name), "\(t.name) produced twice") }
        XCTAssertEqual(Set(got.keys).subtracting(expected.keys).sorted(), [], "names diffusers does not have")
        XCTAssertEqual(Set(expected.keys).subtracting(got.keys).sorted(), [], "diffusers names not produced")
        for (k, shape) in expected { XCTAssertEqual(got[k], shape, k) }
    }

    /// official -> diffusers -> official gives back every tensor bit for bit; spot checks of the
    /// split and the (shift, scale) -> (scale, shift) swap.
    func testRoundTripIsExactAndSplitsAreRight() throws {
        let official = try officialA()
        let diffusers = try DiffusersNaming.officialToDiffusers(official)
        let back = Dictionary(uniqueKeysWithValues: try DiffusersNaming.diffusersToOfficial(diffusers).map { ($0.name, $0) })
        XCTAssertEqual(back.count, official.count)
        for t in official { XCTAssertEqual(back[t.name], t, t.name) }

        let o = Dictionary(uniqueKeysWithValues: official.map { ($0.name, $0) }), d = Dictionary(uniqueKeysWithValues: diffusers.map { ($0.name, $0) })
        let H = 32
        let qkv = try XCTUnwrap(o["double_blocks.0.img_attn_qkv.weight"])
        XCTAssertEqual(d["transformer_blocks.0.attn.to_k.weight"]?.values, Array(qkv.values[(H * H)..<(2 * H * H)]))
        let linear1 = try XCTUnwrap(o["single_blocks.0.linear1.bias"])
        XCTAssertEqual(d["single_transformer_blocks.0.proj_mlp.bias"]?.values, Array(linear1.values[(3 * H)...]))
        let ada = try XCTUnwrap(o["final_layer.adaLN_modulation.1.bias"])   // official (shift, scale)
        XCTAssertEqual(d["norm_out.linear.bias"]?.values, Array(ada.values[H...] + ada.values[..<H]))   // diffusers (scale, shift)
    }

    func testBadNamesAndShapesGiveClearErrors() throws {
        let official = try officialA()
        XCTAssertThrowsError(try DiffusersNaming.officialToDiffusers(official + [NamedTensor(name: "text_encoder.embedding.weight", shape: [1], values: [0])])) { e in
            XCTAssert("\(e)".contains("text_encoder.embedding.weight") && "\(e)".contains("not official"), "\(e)")
        }
        var bad = official
        let i = try XCTUnwrap(bad.firstIndex { $0.name == "double_blocks.0.img_attn_qkv.bias" })
        bad[i] = NamedTensor(name: bad[i].name, shape: [95], values: Array(bad[i].values.prefix(95)))
        XCTAssertThrowsError(try DiffusersNaming.officialToDiffusers(bad)) { e in
            XCTAssert("\(e)".contains("double_blocks.0.img_attn_qkv.bias") && "\(e)".contains("split"), "\(e)")
        }
        let diffusers = try DiffusersNaming.officialToDiffusers(official).filter { $0.name != "transformer_blocks.0.attn.to_v.weight" }
        XCTAssertThrowsError(try DiffusersNaming.diffusersToOfficial(diffusers)) { e in
            XCTAssert("\(e)".contains("double_blocks.0.img_attn_qkv.weight") && "\(e)".contains("missing"), "\(e)")
        }
    }
}
