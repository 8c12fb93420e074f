import Foundation

/// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N,
/// N bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin,
/// end]} (byte offsets into the data that follows, contiguous, no gaps) plus an optional
/// "__metadata__" object of string -> string, then the raw little-endian data. hv pads the
/// header with spaces to a multiple of 8 so the data stays 8-byte aligned. Only F32 here.
public enum Safetensors {
    /// Writes `tensors` (fp32) to `path` atomically: streamed to a temporary file, fsynced, renamed.
    public static func write(_ tensors: [NamedTensor], metadata: [String: String] = [:], to path: String) throws {
        var seen = Set<String>()
        for t in tensors {
            guard !t.name.isEmpty, t.name != "__metadata__" else { throw SafetensorsError.badInput(path: path, detail: "invalid tensor name '\(t.name)'") }
            guard seen.insert(t.name).inserted else { throw SafetensorsError.badInput(path: path, detail: "tensor \(t.name) appears twice") }
            guard t.shape.allSatisfy({ $0 >= 0 }), t.shape.reduce(1, *) == t.values.count else {
                throw SafetensorsError.badInput(path: path, detail: "tensor \(t.name): shape \(t.shape) does not hold \(t.values.count) values")
            }
        }
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.values.count]] as [String: Any]
            offset += 4 * t.values.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys, .withoutEscapingSlashes])
        while json.count % 8 != 0 { json.append(0x20) }

        let dir = (path as NSString).deletingLastPathComponent
        let tmp = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: nil), let h = FileHandle(forWritingAtPath: tmp) else {
            throw CheckpointError.io(path: tmp, detail: "cannot create (\(String(cString: strerror(errno))); does \(dir.isEmpty ? "." : dir) exist and is it writable?)")
        }
        do {
            var prefix = Data()
            withUnsafeBytes(of: UInt64(json.count).littleEndian) { prefix.append(contentsOf: $0) }
            try h.write(contentsOf: prefix + json)
            for t in tensors {
                // Little-endian hosts only (x86-64, arm64): the in-memory floats are the file bytes.
                try t.values.withUnsafeBytes { try h.write(contentsOf: $0) }
            }
            try h.synchronize()
            try h.close()
        } catch {
            try? h.close()
            try? FileManager.default.removeItem(atPath: tmp)
            throw CheckpointError.io(path: path, detail: "writing failed (disk full?): \(error)")
        }
        try Durable.rename(tmp, path)
        try Durable.sync(dir.isEmpty ? "." : dir)
    }

    /// Reads a safetensors file of F32 tensors (in data order) and its metadata, validating the
    /// header: length, JSON, dtypes, shapes against offsets, contiguous offsets covering the data.
    public static func read(_ path: String) throws -> (tensors: [NamedTensor], metadata: [String: String]) {
        guard let data = FileManager.default.contents(atPath: path) else { throw SafetensorsError.badFile(path: path, detail: "cannot read the file") }
        guard data.count >= 8 else { throw SafetensorsError.badFile(path: path, detail: "\(data.count) bytes: shorter than the 8-byte header length") }
        let n = data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard n <= UInt64(data.count - 8) else { throw SafetensorsError.badFile(path: path, detail: "header length \(n) exceeds the file (\(data.count) bytes)") }
        let headerBytes = data.subdata(in: 8..<(8 + Int(n)))
        guard let header = try? JSONSerialization.jsonObject(with: headerBytes) as? [String: Any] else {
            throw SafetensorsError.badFile(path: path, detail: "the header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        if let m = header["__metadata__"] {
            guard let m = m as? [String: String] else { throw SafetensorsError.badFile(path: path, detail: "__metadata__ must map strings to strings") }
            metadata = m
        }
        let base = 8 + Int(n)
        var entries: [(String, [Int], Int, Int)] = []
        for (name, v) in header where name != "__metadata__" {
            guard let e = v as? [String: Any], let dtype = e["dtype"] as? String, let shape = e["shape"] as? [Int],
                  let offs = e["data_offsets"] as? [Int], offs.count == 2 else {
                throw SafetensorsError.badFile(path: path, detail: "tensor \(name): entry needs dtype, shape and data_offsets [begin, end]")
            }
            guard dtype == "F32" else { throw SafetensorsError.badFile(path: path, detail: "tensor \(name): dtype \(dtype) (hv reads F32 only)") }
            guard shape.allSatisfy({ $0 >= 0 }), offs[1] - offs[0] == 4 * shape.reduce(1, *), offs[0] >= 0 else {
                throw SafetensorsError.badFile(path: path, detail: "tensor \(name): shape \(shape) does not match data_offsets \(offs)")
            }
            entries.append((name, shape, offs[0], offs[1]))
        }
        entries.sort { ($0.2, $0.3) < ($1.2, $1.3) }
        var expected = 0
        for e in entries {
            guard e.2 == expected else { throw SafetensorsError.badFile(path: path, detail: "tensor \(e.0): data_offsets start at \(e.2), expected \(expected) (gap or overlap)") }
            expected = e.3
        }
        guard base + expected == data.count else {
            throw SafetensorsError.badFile(path: path, detail: "the data is \(data.count - base) bytes, the header describes \(expected)")
        }
        let tensors = entries.map { e in
            let count = (e.3 - e.2) / 4
            let values = [Float](unsafeUninitializedCapacity: count) { buf, k in
                _ = data.copyBytes(to: UnsafeMutableRawBufferPointer(buf), from: (base + e.2)..<(base + e.3))
                k = count
            }
            return NamedTensor(name: e.0, shape: e.1, values: values)
        }
        return (tensors, metadata)
    }
}

public enum SafetensorsError: Error, CustomStringConvertible {
    case badInput(path: String, detail: String)
    case badFile(path: String, detail: String)

    public var description: String {
        switch self {
        case .badInput(let p, let d): "cannot write \(p) as safetensors: \(d)"
        case .badFile(let p, let d): "\(p) is not a valid safetensors file: \(d)"
        }
    }
}
