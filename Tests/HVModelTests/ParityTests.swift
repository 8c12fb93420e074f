import Foundation
import HVCheckpoint
import HVModel
import HVTensor
import XCTest
import _HVTestSupport

/// Forward parity with an independent implementation: diffusers' HunyuanVideoTransformer3DModel,
/// run once with random weights (converted to the official names) by scripts/dev/make_dit_fixtures.py.
final class ParityTests: XCTestCase {
    let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// `tolerance`: max abs error on v. Config B feeds guidance x 1000 = 6000 through the fp32
    /// sinusoid (as the official code does); PyTorch's vectorised expf differs from glibc's by
    /// 1 ulp in 2 of the 128 frequencies, which at t = 6000 moves v by ~1.5e-4 (2e-5 of |v|max 6.9).
    func check(_ name: String, tolerance: Float = 1e-4) throws {
        let path = fixtures.appendingPathComponent(name).path
        let file = try H5File(path: path, mode: .readOnly)
        defer { try? file.close() }
        let config = try JSONDecoder().decode(DiTConfig.self, from: Data(try file.stringAttribute("config").utf8))
        let model = HunyuanDiT(config: config, seed: 0)
        try ModelWeights.load(model.namedParameters(), from: try file.group("weights"), file: path, strict: true)
        let g = try file.group("inputs")
        let guidance = try g.exists("guidance") ? try TensorIO.read(g, name: "guidance").scalars : nil
        let inputs = DiTInputs(x: try TensorIO.read(g, name: "x"), t: try TensorIO.read(g, name: "t").scalars,
                               text_states: try TensorIO.read(g, name: "text_states"), text_mask: try TensorIO.read(g, name: "text_mask"),
                               text_states_2: try TensorIO.read(g, name: "text_states_2"), guidance: guidance)
        let expected = try TensorIO.read(try file.group("outputs"), name: "v")
        let v = GradMode.withoutGrad { model(inputs) }
        XCTAssertEqual(v.shape, expected.shape)
        let err = maxAbsDiff(v, expected)
        let scale = expected.scalars.map(abs).max() ?? 1
        XCTAssertLessThanOrEqual(err, tolerance, "\(name): max abs error \(err) (output scale \(scale))")
    }

    func testParityConfigA() throws { try check("dit_parity_a.h5") }
    func testParityConfigBWithGuidance() throws { try check("dit_parity_b.h5", tolerance: 2e-4) }
}
