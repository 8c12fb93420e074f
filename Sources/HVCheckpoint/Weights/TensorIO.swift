import HVTensor

/// Tensors <-> HDF5 datasets (fp32, row-major, shape preserved).
public enum TensorIO {
    /// Writes `tensor` as dataset `name` of `group`; `checksum` adds HDF5's Fletcher-32 filter
    /// (a corrupted chunk then fails to read instead of returning wrong numbers).
    public static func write(_ tensor: Tensor, to group: H5Group, name: String, checksum: Bool = true) throws {
        let shape = tensor.shape.isEmpty ? [1] : tensor.shape
        let opts = checksum && tensor.count > 0 ? H5DatasetOptions(fletcher32: true) : H5DatasetOptions()
        try group.write(name, tensor.scalars, shape: shape, options: opts)
    }

    public static func read(_ group: H5Group, name: String) throws -> Tensor {
        let ds = try group.dataset(name)
        let shape = try ds.shape()
        let values: [Float] = try ds.read(as: Float.self)
        return Tensor(values, shape: shape)
    }
}

public enum WeightsError: Error, CustomStringConvertible {
    case missing(file: String, names: [String])
    case shapeMismatch(file: String, name: String, expected: [Int], found: [Int])
    case unexpected(file: String, names: [String])

    public var description: String {
        switch self {
        case .missing(let f, let n):
            "\(f): \(n.count) parameter(s) missing, e.g. \(n.prefix(5).joined(separator: ", ")) — is this a checkpoint of the same model config?"
        case .shapeMismatch(let f, let n, let e, let g):
            "\(f): parameter \(n) has shape \(g) but the model expects \(e) — model config mismatch"
        case .unexpected(let f, let n):
            "\(f): \(n.count) tensor(s) the model does not have, e.g. \(n.prefix(5).joined(separator: ", "))"
        }
    }
}

/// Whole-model weights stored as one dataset per parameter under its official name.
public enum ModelWeights {
    /// Fills `params` from `group`. Every parameter must be present with its exact shape;
    /// with `strict`, datasets the model lacks are an error too.
    public static func load(_ params: [(String, Tensor)], from group: H5Group, file: String, strict: Bool = false) throws {
        let available = Set(try group.children())
        let missing = params.map(\.0).filter { !available.contains($0) }
        if !missing.isEmpty { throw WeightsError.missing(file: file, names: missing) }
        if strict {
            let names = Set(params.map(\.0))
            let extra = available.filter { !names.contains($0) }.sorted()
            if !extra.isEmpty { throw WeightsError.unexpected(file: file, names: extra) }
        }
        for (name, p) in params {
            let t = try TensorIO.read(group, name: name)
            let found = t.shape == [1] && p.shape.isEmpty ? [] : t.shape
            guard found == p.shape else { throw WeightsError.shapeMismatch(file: file, name: name, expected: p.shape, found: t.shape) }
            p.assign(t.reshape(p.shape))
        }
    }

    public static func save(_ params: [(String, Tensor)], to group: H5Group, checksum: Bool = true) throws {
        for (name, p) in params { try TensorIO.write(p, to: group, name: name, checksum: checksum) }
    }
}
