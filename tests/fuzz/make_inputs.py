#!/usr/bin/env python3
"""Writes the seed corpus (small valid files) and the regression inputs (the crash files of issue 16) of
every fuzz target: OUT/corpus/<target>/* and OUT/regressions/<target>/*. Regression inputs found by
fuzzing are committed in tests/fuzz/regressions/<target>/ instead; launch/fuzz.sh runs both.
Needs python3 with numpy; torch and PIL (python3-torch, python3-pil) add .pt and image seeds."""
import gzip, io, json, os, struct, sys, tarfile, zipfile, zlib

out = sys.argv[1] if len(sys.argv) > 1 else "fuzz-inputs"


def put(kind, target, name, data):
    d = os.path.join(out, kind, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def seed(target, name, data): put("corpus", target, name, data)
def regression(target, name, data): put("regressions", target, name, data)


def deep(n): return "[" * n + "]" * n

# ---------------------------------------------------------------- JSON, COMMIT markers, manifests
seed("fuzz_json", "object.json", '{"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n"], "b": {"c": {}}}')
seed("fuzz_json", "numbers.json", "[0, -0, 1e-300, 123456789012345678, 1.5E+10]")
regression("fuzz_json", "nested_20000.json", deep(20000))
regression("fuzz_json", "bad_u_escape.json", '["\\uZZZZ"]')
regression("fuzz_json", "huge_integer.json", "[99999999999999999999]")
commit = {"format": "cm-checkpoint", "version": 1, "step": 1,
          "files": [{"name": "a.bin", "bytes": 3, "crc32": zlib.crc32(b"abc")}]}
seed("fuzz_commit", "COMMIT", json.dumps(commit, indent=1))
regression("fuzz_commit", "nested_COMMIT", '{"format": ' + deep(20000) + "}")
manifest = {"format": "cm-image-shards", "format_version": 2, "name": "toy", "source_format": "cifar10",
            "source": "/x", "preprocessing": "none", "paper_preprocessing": True, "height": 32, "width": 32,
            "channels": 3, "num_classes": 10, "total_records": 5, "shard_count": 2, "checksum": "crc32",
            "shards": [{"file": "toy-00000-of-00002.h5", "first_record": 0, "records": 3, "images_crc32": "0000abcd",
                        "labels_crc32": "00001234", "file_bytes": 100},
                       {"file": "toy-00001-of-00002.h5", "first_record": 3, "records": 2, "images_crc32": "0000abcd",
                        "labels_crc32": "00001234", "file_bytes": 100}]}
seed("fuzz_manifest", "manifest.json", json.dumps(manifest, indent=2))
regression("fuzz_manifest", "nested_manifest.json", '{"format": ' + deep(20000) + "}")
bad = dict(manifest); bad["shards"] = [dict(manifest["shards"][0], records=2**62), dict(manifest["shards"][1], first_record=2**62, records=2**62)]
regression("fuzz_manifest", "records_overflow.json", json.dumps(bad))

# ---------------------------------------------------------------- safetensors
def safetensors(header, data=b""):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data

seed("fuzz_safetensors", "two.safetensors", safetensors(
    {"__metadata__": {"k": "v"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
     "b": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]}}, struct.pack("<4fq", 1, 2, 3, 4, 5)))
seed("fuzz_safetensors", "empty.safetensors", safetensors({"e": {"dtype": "BF16", "shape": [0, 3], "data_offsets": [0, 0]}}))
regression("fuzz_safetensors", "nested_header.safetensors", struct.pack("<Q", 40000) + deep(20000).encode())
regression("fuzz_safetensors", "shape_overflow.safetensors", safetensors({"w": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}))
regression("fuzz_safetensors", "shape_wrap.safetensors", safetensors({"w": {"dtype": "F32", "shape": [2**62], "data_offsets": [0, 0]}}))

# ---------------------------------------------------------------- .pt (zip + pickle)
def pt(pickle, storages=(), deflate=False):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/byteorder", "little")
        for k, v in storages:
            z.writestr("archive/data/" + k, v)
    return b.getvalue()

P = b"\x80\x02"
try:
    import torch
    for name, obj in [("state_dict.pt", {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2, dtype=torch.float16)}),
                      ("nested.pt", {"model": {"l": [torch.ones(2, dtype=torch.int64)]}, "step": 3, "name": "x"})]:
        b = io.BytesIO(); torch.save(obj, b); seed("fuzz_torch_import", name, b.getvalue())
    import collections
    b = io.BytesIO(); torch.save(collections.OrderedDict(a=torch.ones(3)[1:]), b); seed("fuzz_torch_import", "view.pt", b.getvalue())
except ImportError:
    pass
def xs(t): return b"X" + struct.pack("<I", len(t)) + t.encode()
# A torch.save-shaped state dict written by hand (OrderedDict of one 2x3 float tensor, a view of storage 0).
seed("fuzz_torch_import", "handmade_state_dict.pt", pt(
    P + b"ccollections\nOrderedDict\nq\x00)Rq\x01" + xs("w") + b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((" + xs("storage") +
    b"ctorch\nFloatStorage\nq\x03" + xs("0") + xs("cpu") + b"K\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)RtRs.",
    [("0", struct.pack("<6f", 1, 2, 3, 4, 5, 6))]))
seed("fuzz_torch_import", "handmade.pt", pt(P + b"}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bG?\xf0\x00\x00\x00\x00\x00\x00u."))
regression("fuzz_torch_import", "list_contains_itself.pt", pt(P + b"]q\x00h\x00a."))
regression("fuzz_torch_import", "dict_contains_itself.pt", pt(P + b"}q\x00K\x01h\x00s."))
regression("fuzz_torch_import", "lists_200000_deep.pt", pt(P + b"]" * 200000 + b"a" * 199999 + b".", deflate=True))
regression("fuzz_torch_import", "cyclic_rebuild_from_type.pt",
           pt(P + b"ctorch._tensor\n_rebuild_from_type_v2\nq\x00]q\x01(h\x00Nh\x01NeR."))
regression("fuzz_torch_import", "bad_int_operand.pt", pt(P + b"Iabc\n."))
pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
regression("fuzz_torch_import", "storage_numel_wrap.pt", pt(P + pid + b"\x8a\x08" + struct.pack("<Q", 2**62) + b"tQ.", [("0", b"")]))
big = b"\x8a\x08" + struct.pack("<Q", 2**40)
regression("fuzz_torch_import", "stride_overflow.pt", pt(P + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x04tQK\x00(" + big + big + b"t(" + big + b"K\x01t\x89}tR.", [("0", bytes(16))]))

# ---------------------------------------------------------------- .npy, .npz
def npy(d, data=b"", version=1):
    h = d.encode()
    pre = 10 if version == 1 else 12
    h += b" " * ((64 - (len(h) + pre + 1) % 64) % 64) + b"\n"
    ln = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + ln + h + data

seed("fuzz_npy", "u1.npy", npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }", bytes(6)))
seed("fuzz_npy", "f8_v2.npy", npy("{'descr': '<f8', 'fortran_order': True, 'shape': (2,), }", bytes(16), version=2))
seed("fuzz_npy", "scalar.npy", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (), }", bytes(8)))
long_header = npy("{'descr': '" + "u" * 249000 + "', 'fortran_order': False, 'shape': (1, 2, 2, 3), }", version=2)
regression("fuzz_npy", "negative_dim.npy", npy("{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 3), }"))


def npz(arrays, deflate=False):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for k, v in arrays:
            z.writestr(k + ".npy", v)
    return b.getvalue()

seed("fuzz_zip_npz", "images.npz", npz([("arr_0", npy("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2, 2, 3), }", bytes(range(24)))),
                                       ("arr_1", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", bytes(16)))]))
seed("fuzz_zip_npz", "deflated.npz", npz([("mu", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", bytes(24)))], deflate=True))
regression("fuzz_zip_npz", "npy_header_249KB.npz", npz([("arr_0", long_header)], deflate=True))
regression("fuzz_npy", "header_249KB.npy", long_header)

# ---------------------------------------------------------------- tar / pax, CIFAR-10
def tar(members, fmt=tarfile.PAX_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 0
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()

seed("fuzz_tar", "plain.tar", tar([("a/b.txt", b"hello"), ("dir/" + "long" * 40 + ".bin", b"x" * 600)]))
seed("fuzz_tar", "gnu.tar.gz", gzip.compress(tar([("n" * 120, b"abc")], tarfile.GNU_FORMAT), mtime=0))


def pax_path_tar(n):
    rec = b" path=" + b"a" * n + b"\n"
    ln = len(rec) + len(str(len(rec) + 7))
    rec = str(ln).encode() + rec
    def hdr(name, size, typ):
        h = bytearray(512)
        h[0:len(name)] = name
        h[100:108] = b"0000644\0"; h[108:116] = b"0000000\0"; h[116:124] = b"0000000\0"
        h[124:136] = b"%011o\0" % size; h[136:148] = b"00000000000\0"; h[156:157] = typ; h[257:265] = b"ustar\x0000"
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)
    pad = lambda b: b + bytes((512 - len(b) % 512) % 512)
    return hdr(b"././@PaxHeader", len(rec), b"x") + pad(rec) + hdr(b"x.bin", 3, b"0") + pad(b"abc") + bytes(1024)

regression("fuzz_tar", "pax_path_300000.tar.gz", gzip.compress(pax_path_tar(300000), mtime=0))
rec = bytes([3]) + bytes(range(256)) * 12
seed("fuzz_cifar10", "cifar-10-binary.tar.gz", gzip.compress(tar([("cifar-10-batches-bin/data_batch_%d.bin" % i, rec * 2) for i in range(1, 6)]), mtime=0))
regression("fuzz_cifar10", "pax_path_300000.tar.gz", gzip.compress(pax_path_tar(300000), mtime=0))

# ---------------------------------------------------------------- IDX
def idx_input(n, rows, cols):
    images = struct.pack(">IIII", 0x803, n, rows, cols) + bytes(range(rows * cols % 256)) * 0 + bytes(n * rows * cols)
    labels = struct.pack(">II", 0x801, n) + bytes([i % 10 for i in range(n)])
    return struct.pack("<H", len(images)) + images + labels

seed("fuzz_idx", "three_4x4", idx_input(3, 4, 4))
seed("fuzz_idx", "one_28x28", idx_input(1, 28, 28))

# ---------------------------------------------------------------- images
def png(w, h, color, depth, raw_rows):
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = b"".join(b"\0" + r for r in raw_rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

seed("fuzz_image", "rgb.png", png(4, 3, 2, 8, [bytes(range(y, y + 12)) for y in range(3)]))
seed("fuzz_image", "grey16.png", png(3, 2, 0, 16, [bytes(6), bytes(range(6))]))
seed("fuzz_image", "palette.png", png(2, 2, 3, 8, [b"\0\0", b"\0\0"])[:-12].replace(b"IDAT", b"IDAT", 1))
try:
    from PIL import Image
    for fmt_, ext, mode in [("PNG", "png", "RGB"), ("PNG", "png", "L"), ("PNG", "png", "RGBA"), ("JPEG", "jpg", "RGB"),
                            ("JPEG", "jpg", "L"), ("WEBP", "webp", "RGB")]:
        im = Image.new(mode, (5, 3))
        for x in range(5):
            for y in range(3):
                im.putpixel((x, y), (x * 40, y * 80, 7) if mode in ("RGB",) else (x * 40, y * 80, 7, 200) if mode == "RGBA" else x * 50)
        b = io.BytesIO(); im.save(b, fmt_); seed("fuzz_image", "%s_%s.%s" % (fmt_.lower(), mode, ext), b.getvalue())
except ImportError:
    pass

# ---------------------------------------------------------------- TOML recipes
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "recipes", "configs")
for name in ["_base.toml", "toy_ct.toml", "cifar10_cd_lpips.toml"]:
    p = os.path.join(root, name)
    if os.path.exists(p):
        with open(p, "rb") as f:
            seed("fuzz_toml", name, f.read())
seed("fuzz_toml", "types.toml", 'a = 1\nb = [1.5, 2]\n[t]\ns = "x"\nd = 1979-05-27T07:32:00Z\n[[arr]]\nk = true\n')
print("fuzz inputs written to", out)
