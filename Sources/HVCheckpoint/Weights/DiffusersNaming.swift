/// A named fp32 tensor (row-major), as exported.
public struct NamedTensor: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var values: [Float]
    public init(name: String, shape: [Int], values: [Float]) { self.name = name; self.shape = shape; self.values = values }
}

/// Official HunyuanVideo parameter names <-> diffusers' `HunyuanVideoTransformer3DModel` names.
///
/// The inverse of `diffusers_to_official` in scripts/dev/make_dit_fixtures.py (itself the inverse
/// of diffusers' scripts/convert_hunyuan_video_to_diffusers.py), as one table used both ways:
/// - fused projections are split along the output axis (dim 0): `*_attn_qkv` / `self_attn_qkv`
///   into q, k, v (H rows each); single-stream `linear1` into q, k, v (H each) and the MLP input
///   (the remaining rows);
/// - the final layer's adaLN rows are (shift, scale) in the official code and (scale, shift) in
///   diffusers' `AdaLayerNormContinuous`: the halves swap;
/// - the dual/single blocks' modulation chunk orders agree: a plain rename.
/// Only DiT parameters have diffusers names (hv's `text_encoder.*` stand-in has none).
public enum DiffusersNaming {
    enum Kind { case same, split, swapHalves }
    /// `official` and `diffusers` are module paths (a `.weight`/`.bias` leaf is appended).
    struct Rule { let official: String; let diffusers: [String]; let kind: Kind }

    static func r(_ o: String, _ d: String) -> Rule { Rule(official: o, diffusers: [d], kind: .same) }

    static let topLevel: [Rule] = [
        r("img_in.proj", "x_embedder.proj"),
        r("txt_in.input_embedder", "context_embedder.proj_in"),
        r("txt_in.t_embedder.mlp.0", "context_embedder.time_text_embed.timestep_embedder.linear_1"),
        r("txt_in.t_embedder.mlp.2", "context_embedder.time_text_embed.timestep_embedder.linear_2"),
        r("txt_in.c_embedder.linear_1", "context_embedder.time_text_embed.text_embedder.linear_1"),
        r("txt_in.c_embedder.linear_2", "context_embedder.time_text_embed.text_embedder.linear_2"),
        r("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
        r("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
        r("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        r("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        r("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1"),
        r("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2"),
        Rule(official: "final_layer.adaLN_modulation.1", diffusers: ["norm_out.linear"], kind: .swapHalves),
        r("final_layer.linear", "proj_out"),
    ]

    /// Per-block rules: (official block prefix, diffusers block prefix, rules relative to them).
    static let blocks: [(String, String, [Rule])] = [
        ("txt_in.individual_token_refiner.blocks.", "context_embedder.token_refiner.refiner_blocks.", [
            r("norm1", "norm1"),
            Rule(official: "self_attn_qkv", diffusers: ["attn.to_q", "attn.to_k", "attn.to_v"], kind: .split),
            r("self_attn_proj", "attn.to_out.0"),
            r("norm2", "norm2"),
            r("mlp.fc1", "ff.net.0.proj"),
            r("mlp.fc2", "ff.net.2"),
            r("adaLN_modulation.1", "norm_out.linear"),  // (gate_msa, gate_mlp) in both
        ]),
        ("double_blocks.", "transformer_blocks.", [
            r("img_mod.linear", "norm1.linear"),
            Rule(official: "img_attn_qkv", diffusers: ["attn.to_q", "attn.to_k", "attn.to_v"], kind: .split),
            r("img_attn_q_norm", "attn.norm_q"),
            r("img_attn_k_norm", "attn.norm_k"),
            r("img_attn_proj", "attn.to_out.0"),
            r("img_mlp.fc1", "ff.net.0.proj"),
            r("img_mlp.fc2", "ff.net.2"),
            r("txt_mod.linear", "norm1_context.linear"),
            Rule(official: "txt_attn_qkv", diffusers: ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], kind: .split),
            r("txt_attn_q_norm", "attn.norm_added_q"),
            r("txt_attn_k_norm", "attn.norm_added_k"),
            r("txt_attn_proj", "attn.to_add_out"),
            r("txt_mlp.fc1", "ff_context.net.0.proj"),
            r("txt_mlp.fc2", "ff_context.net.2"),
        ]),
        ("single_blocks.", "single_transformer_blocks.", [
            Rule(official: "linear1", diffusers: ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], kind: .split),
            r("linear2", "proj_out"),
            r("q_norm", "attn.norm_q"),
            r("k_norm", "attn.norm_k"),
            r("modulation.linear", "norm.linear"),
        ]),
    ]

    /// The rule for an official (`fromOfficial`) or diffusers module path, with the concrete
    /// names on both sides and, for diffusers names, which part of a split it is.
    static func resolve(module: String, fromOfficial: Bool) -> (official: String, diffusers: [String], kind: Kind, part: Int)? {
        for rule in topLevel {
            if fromOfficial, rule.official == module { return (rule.official, rule.diffusers, rule.kind, 0) }
            if !fromOfficial, let p = rule.diffusers.firstIndex(of: module) { return (rule.official, rule.diffusers, rule.kind, p) }
        }
        for (op, dp, rules) in blocks {
            let prefix = fromOfficial ? op : dp
            guard module.hasPrefix(prefix) else { continue }
            let rest = module.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: "."), let n = Int(rest[..<dot]), n >= 0, String(n) == rest[..<dot] else { continue }
            let local = String(rest[rest.index(after: dot)...])
            for rule in rules {
                let o = "\(op)\(n).\(rule.official)", d = rule.diffusers.map { "\(dp)\(n).\($0)" }
                if fromOfficial, rule.official == local { return (o, d, rule.kind, 0) }
                if !fromOfficial, let p = rule.diffusers.firstIndex(of: local) { return (o, d, rule.kind, p) }
            }
        }
        return nil
    }

    static func splitName(_ name: String) -> (module: String, leaf: String)? {
        guard let dot = name.lastIndex(of: "."), case let leaf = String(name[name.index(after: dot)...]), leaf == "weight" || leaf == "bias" else { return nil }
        return (String(name[..<dot]), leaf)
    }

    /// The hidden size H (rows of each q/k/v part): `img_in.proj.bias` [H] or `.weight` [H, ...].
    public static func hiddenSize(of tensors: [NamedTensor]) throws -> Int {
        if let t = tensors.first(where: { $0.name == "img_in.proj.bias" || $0.name == "img_in.proj.weight" }), let h = t.shape.first, h > 0 { return h }
        throw NamingError.cannotInferHiddenSize
    }

    /// Official names -> diffusers names (splitting fused projections, reordering the final
    /// adaLN). Throws on names that are not DiT parameters or shapes that do not split.
    public static func officialToDiffusers(_ tensors: [NamedTensor]) throws -> [NamedTensor] {
        let unknown = tensors.map(\.name).filter { n in splitName(n).flatMap { resolve(module: $0.module, fromOfficial: true) } == nil }
        if !unknown.isEmpty { throw NamingError.unknown(names: unknown, naming: "official") }
        let H = try hiddenSize(of: tensors)
        var out: [NamedTensor] = []
        for t in tensors {
            let (module, leaf) = splitName(t.name)!
            let rule = resolve(module: module, fromOfficial: true)!
            guard t.values.count == t.shape.reduce(1, *) else { throw NamingError.badShape(name: t.name, shape: t.shape, detail: "holds \(t.values.count) values") }
            switch rule.kind {
            case .same:
                out.append(NamedTensor(name: rule.diffusers[0] + "." + leaf, shape: t.shape, values: t.values))
            case .swapHalves:
                guard let rows = t.shape.first, rows % 2 == 0 else { throw NamingError.badShape(name: t.name, shape: t.shape, detail: "needs an even number of rows to swap (shift, scale)") }
                let half = t.values.count / 2
                out.append(NamedTensor(name: rule.diffusers[0] + "." + leaf, shape: t.shape, values: Array(t.values[half...] + t.values[..<half])))
            case .split:
                let parts = rule.diffusers.count
                guard let rows = t.shape.first, rows > H * (parts - 1), parts == 4 || rows == H * parts else {
                    throw NamingError.badShape(name: t.name, shape: t.shape, detail: "cannot split into \(parts) parts of \(H) rows along dim 0")
                }
                let inner = t.shape.dropFirst().reduce(1, *)
                var start = 0
                for (p, d) in rule.diffusers.enumerated() {
                    let r = p == parts - 1 ? rows - H * (parts - 1) : H
                    out.append(NamedTensor(name: d + "." + leaf, shape: [r] + t.shape.dropFirst(), values: Array(t.values[(start * inner)..<((start + r) * inner)])))
                    start += r
                }
            }
        }
        return out
    }

    /// Diffusers names -> official names (fusing q/k/v(/mlp) in order, reordering the final adaLN).
    public static func diffusersToOfficial(_ tensors: [NamedTensor]) throws -> [NamedTensor] {
        let unknown = tensors.map(\.name).filter { n in splitName(n).flatMap { resolve(module: $0.module, fromOfficial: false) } == nil }
        if !unknown.isEmpty { throw NamingError.unknown(names: unknown, naming: "diffusers") }
        var out: [NamedTensor] = []
        var pending: [String: [NamedTensor?]] = [:]   // official name -> split parts seen so far
        var order: [String] = []
        for t in tensors {
            let (module, leaf) = splitName(t.name)!
            let rule = resolve(module: module, fromOfficial: false)!
            let name = rule.official + "." + leaf
            switch rule.kind {
            case .same:
                out.append(NamedTensor(name: name, shape: t.shape, values: t.values))
            case .swapHalves:
                guard let rows = t.shape.first, rows % 2 == 0 else { throw NamingError.badShape(name: t.name, shape: t.shape, detail: "needs an even number of rows to swap (scale, shift)") }
                let half = t.values.count / 2
                out.append(NamedTensor(name: name, shape: t.shape, values: Array(t.values[half...] + t.values[..<half])))
            case .split:
                if pending[name] == nil { pending[name] = Array(repeating: nil, count: rule.diffusers.count); order.append(name) }
                guard pending[name]![rule.part] == nil else { throw NamingError.duplicate(name: t.name) }
                pending[name]![rule.part] = t
            }
        }
        for name in order {
            let parts = pending[name]!
            let missing = parts.indices.filter { parts[$0] == nil }
            guard missing.isEmpty else { throw NamingError.missingParts(official: name, count: missing.count) }
            let ps = parts.map { $0! }
            let tail = Array(ps[0].shape.dropFirst())
            guard ps.allSatisfy({ Array($0.shape.dropFirst()) == tail && !$0.shape.isEmpty }) else {
                throw NamingError.badShape(name: name, shape: ps[0].shape, detail: "parts \(ps.map(\.name)) have different trailing shapes \(ps.map(\.shape))")
            }
            out.append(NamedTensor(name: name, shape: [ps.reduce(0) { $0 + $1.shape[0] }] + tail, values: ps.flatMap(\.values)))
        }
        let names = out.map(\.name)
        if Set(names).count != names.count { throw NamingError.duplicate(name: names.first { n in names.filter { $0 == n }.count > 1 }!) }
        return out
    }
}

public enum NamingError: Error, CustomStringConvertible {
    case unknown(names: [String], naming: String)
    case badShape(name: String, shape: [Int], detail: String)
    case missingParts(official: String, count: Int)
    case duplicate(name: String)
    case cannotInferHiddenSize

    public var description: String {
        switch self {
        case .unknown(let n, let naming):
            "\(n.count) tensor name(s) are not \(naming) HunyuanVideo DiT parameter names, e.g. \(n.prefix(5).joined(separator: ", "))"
        case .badShape(let n, let s, let d): "tensor \(n) of shape \(s): \(d)"
        case .missingParts(let o, let c): "\(o): \(c) of its diffusers parts (q/k/v or proj_mlp) are missing"
        case .duplicate(let n): "tensor \(n) appears twice"
        case .cannotInferHiddenSize: "cannot tell the hidden size: no img_in.proj.weight or img_in.proj.bias among the tensors"
        }
    }
}
