import HVTensor

/// 1-D fp32 datasets with hv's own checksums: contiguous (unfiltered) storage, so HDF5 writes
/// and reads the bytes straight through, plus one `Checksum64` per block of elements stored as
/// dataset attributes and checked on every read. Blocks make ranged (hyperslab) reads
/// verifiable: a read checks only the blocks it touches.
///
/// Attributes: `hv_checksum` (algorithm name), `hv_checksum_block` (elements per block),
/// `hv_checksums` (int64 array, one bit pattern per block). Datasets without them (checkpoints
/// written before, with HDF5's Fletcher-32 filter) are read through HDF5, which checks the filter.
public enum ChecksummedArray {
    static let algorithmAttribute = "hv_checksum", blockAttribute = "hv_checksum_block", sumsAttribute = "hv_checksums"

    /// Elements per checksum block: 4 MiB blocks, larger for huge datasets so that the sums stay
    /// under 4096 (HDF5 keeps attributes in the object header, at most 64 KiB).
    public static func blockElements(count: Int) -> Int { max(1 << 20, (count + 4095) / 4096) }

    /// Creates dataset `name` in `group` holding `values`, with block checksums.
    public static func write(_ group: H5Group, _ name: String, _ values: UnsafeBufferPointer<Float>) throws {
        let block = blockElements(count: values.count)
        var sums: [Int64] = []
        sums.reserveCapacity((values.count + block - 1) / block)
        var start = 0
        while start < values.count {
            let end = min(start + block, values.count)
            sums.append(Int64(bitPattern: Checksum64.of(UnsafeBufferPointer(rebasing: values[start..<end]))))
            start = end
        }
        let ds = try group.createDataset(name, type: .float32, shape: [values.count])
        try ds.write(from: values)
        try ds.setAttribute(algorithmAttribute, .string(Checksum64.name))
        try ds.setAttribute(blockAttribute, .int64(Int64(block)))
        try ds.setAttribute(sumsAttribute, .int64Array(sums))
    }

    public static func write(_ group: H5Group, _ name: String, _ values: [Float]) throws {
        try values.withUnsafeBufferPointer { try write(group, name, $0) }
    }

    /// How a dataset is protected (for `hv-ckpt inspect`).
    public static func protection(_ ds: H5Dataset) throws -> String {
        if try ds.hasAttribute(sumsAttribute) { return try ds.stringAttribute(algorithmAttribute) }
        return try ds.filters().contains(.fletcher32) ? "fletcher32" : "none"
    }

    /// Reads elements `range` (default: all) of 1-D dataset `name` into `buffer`, verifying the
    /// checksum of every block the range touches. Throws `ChecksumError` naming the file and
    /// dataset on a mismatch.
    public static func read(_ group: H5Group, _ name: String, range: Range<Int>? = nil,
                            into buffer: UnsafeMutableBufferPointer<Float>) throws {
        let ds = try group.dataset(name)
        let shape = try ds.shape()
        guard shape.count == 1 else {
            throw HDF5Error.invalidArgument("expected a 1-D dataset, found shape \(shape)", object: ds.path, file: ds.filePath, function: #function)
        }
        let count = shape[0]
        let range = range ?? 0..<count
        guard range.lowerBound >= 0, range.upperBound <= count, buffer.count == range.count else {
            throw HDF5Error.invalidArgument("range \(range) into \(buffer.count) elements of a dataset of \(count)",
                                            object: ds.path, file: ds.filePath, function: #function)
        }
        guard try ds.hasAttribute(sumsAttribute) else {
            // Legacy: HDF5 checks the Fletcher-32 filter per chunk. A non-empty dataset with
            // neither (checksums stripped) could hold anything, so it is refused.
            let verifiable = try count == 0 || ds.filters().contains(.fletcher32)
            guard verifiable else {
                throw ChecksumError.malformed(file: ds.filePath, dataset: ds.path,
                                              detail: "no hv checksums (\(sumsAttribute)) and no Fletcher-32 filter: its values cannot be verified")
            }
            try ds.read(range: range, into: buffer)
            return
        }
        let algorithm = try ds.stringAttribute(algorithmAttribute)
        guard algorithm == Checksum64.name else {
            throw ChecksumError.unknownAlgorithm(file: ds.filePath, dataset: ds.path, algorithm: algorithm)
        }
        let block = Int(try ds.int64Attribute(blockAttribute))
        let sums = try ds.int64ArrayAttribute(sumsAttribute)
        guard block > 0, sums.count == count / block + (count % block == 0 ? 0 : 1) else {
            throw ChecksumError.malformed(file: ds.filePath, dataset: ds.path,
                                          detail: "\(sums.count) checksums of blocks of \(block) for \(count) elements")
        }
        if range.isEmpty { return }
        // Read whole blocks: straight into `buffer` when the range is block-aligned, else via scratch.
        let first = range.lowerBound / block, last = (range.upperBound - 1) / block
        let cover = (first * block)..<min((last + 1) * block, count)
        func check(_ data: UnsafeBufferPointer<Float>) throws {
            for b in first...last {
                let lo = b * block - cover.lowerBound, hi = min(lo + block, data.count)
                let sum = Int64(bitPattern: Checksum64.of(UnsafeBufferPointer(rebasing: data[lo..<hi])))
                if sum != sums[b] {
                    throw ChecksumError.mismatch(file: ds.filePath, dataset: ds.path, elements: (b * block)..<(b * block + hi - lo))
                }
            }
        }
        if cover == range {
            try ds.read(range: range, into: buffer)
            try check(UnsafeBufferPointer(buffer))
        } else {
            var scratch = [Float](unsafeUninitializedCapacity: cover.count) { _, n in n = cover.count }
            try scratch.withUnsafeMutableBufferPointer { s in
                try ds.read(range: cover, into: s)
                try check(UnsafeBufferPointer(s))
                let offset = range.lowerBound - cover.lowerBound
                buffer.baseAddress!.update(from: s.baseAddress! + offset, count: range.count)
            }
        }
    }

    /// All of dataset `name`, verified.
    public static func read(_ group: H5Group, _ name: String) throws -> [Float] {
        let n = try group.dataset(name).count()
        return try [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            try read(group, name, into: buf)
            initialized = n
        }
    }
}

public enum ChecksumError: Error, CustomStringConvertible {
    case mismatch(file: String, dataset: String, elements: Range<Int>)
    case unknownAlgorithm(file: String, dataset: String, algorithm: String)
    case malformed(file: String, dataset: String, detail: String)

    public var description: String {
        switch self {
        case .mismatch(let f, let d, let r):
            "checksum mismatch in dataset \(d) of file \(f) (elements \(r.lowerBound)..<\(r.upperBound)): the stored bytes changed since they were written — the file is corrupt"
        case .unknownAlgorithm(let f, let d, let a):
            "dataset \(d) of file \(f) uses checksum \(a), which this hv does not know (it knows \(Checksum64.name)) — written by a newer hv?"
        case .malformed(let f, let d, let m):
            "dataset \(d) of file \(f) has malformed checksum attributes: \(m)"
        }
    }
}
