import HVTensor

/// A container of parameters and child modules whose dotted paths are the checkpoint keys.
///
/// Paths come from stored property names (via reflection), so a property named `img_attn_qkv`
/// holding a `Linear` yields `img_attn_qkv.weight` and `img_attn_qkv.bias`; arrays of modules
/// give `double_blocks.0.…`. Model code names its properties exactly as the official
/// HunyuanVideo state dict does, which is what makes checkpoints exchangeable.
/// Optional properties that are nil (e.g. a linear without bias) contribute nothing.
open class Module {
    public init() {}

    /// Every parameter under this module, depth first in declaration order, with its path.
    open func namedParameters(prefix: String = "") -> [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        visit(Mirror(reflecting: self), prefix: prefix, into: &out)
        return out
    }

    public func parameters() -> [Tensor] { namedParameters().map(\.1) }

    /// Child modules by name (one level).
    public func children() -> [(String, Module)] {
        var out: [(String, Module)] = []
        var mirror: Mirror? = Mirror(reflecting: self)
        var chain: [Mirror] = []
        while let m = mirror { chain.insert(m, at: 0); mirror = m.superclassMirror }
        for m in chain {
            for child in m.children {
                guard let label = child.label else { continue }
                if let module = child.value as? Module { out.append((label, module)) }
            }
        }
        return out
    }

    /// Sets names on every parameter (call once after building the model).
    public func nameParameters() {
        for (path, p) in namedParameters() { p.name = path; p.requiresGrad = true }
    }

    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.count } }

    public func zeroGrad() { for p in parameters() { p.zeroGrad() } }

    private func visit(_ mirror: Mirror, prefix: String, into out: inout [(String, Tensor)]) {
        if let sup = mirror.superclassMirror { visit(sup, prefix: prefix, into: &out) }
        for child in mirror.children {
            guard var label = child.label else { continue }
            if label.hasPrefix("_") { label.removeFirst() }  // property wrappers' storage
            collect(child.value, path: prefix.isEmpty ? label : "\(prefix).\(label)", into: &out)
        }
    }

    private func collect(_ value: Any, path: String, into out: inout [(String, Tensor)]) {
        // `as?` also unwraps a non-nil Optional stored in Any; nil optionals fall through.
        if let t = value as? Tensor {
            out.append((path, t))
        } else if let m = value as? Module {
            out.append(contentsOf: m.namedParameters(prefix: path))
        } else if let ms = value as? [Module] {
            for (i, m) in ms.enumerated() { out.append(contentsOf: m.namedParameters(prefix: "\(path).\(i)")) }
        }
    }
}

/// torch.nn.Sequential with only the parameterised layers kept: `Sequential([(0, linA), (2, linB)])`
/// names its parameters `0.weight`, `2.weight` as torch does when index 1 is an activation.
public final class Sequential: Module {
    public let layers: [(index: Int, module: Module)]

    public init(_ layers: [(Int, Module)]) { self.layers = layers.map { (index: $0.0, module: $0.1) } }

    public override func namedParameters(prefix: String = "") -> [(String, Tensor)] {
        layers.flatMap { $0.module.namedParameters(prefix: prefix.isEmpty ? "\($0.index)" : "\(prefix).\($0.index)") }
    }

    public subscript(index: Int) -> Module { layers.first { $0.index == index }!.module }
}

/// Parameter initialisers (torch's defaults, drawn from an `HVRandom` stream).
public enum Init {
    /// U(-1/sqrt(fanIn), 1/sqrt(fanIn)) — nn.Linear / nn.Conv3d default for weight and bias.
    public static func uniformFanIn(_ shape: [Int], fanIn: Int, rng: inout HVRandom) -> Tensor {
        let bound = 1 / Float(max(fanIn, 1)).squareRoot()
        return Tensor.rand(shape, low: -bound, high: bound, rng: &rng)
    }

    public static func zeros(_ shape: [Int]) -> Tensor { Tensor(zeros: shape) }
    public static func ones(_ shape: [Int]) -> Tensor { Tensor(repeating: 1, shape: shape) }
}
