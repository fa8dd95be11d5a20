// Image folders: the ILSVRC2012 train folder as the paper preprocessed it ('imagenet': class = WNID from the
// folder or the file-name prefix, labels = index in sorted WNID order, cm/image_datasets.py's
// center_crop_arr to 64x64), and any folder of PNG/JPEG/WebP images with optional class subfolders
// ('folder'). Files are listed as the reference does: depth first, entries of each directory sorted by name.
#include <algorithm>
#include <filesystem>
#include <fmt/format.h>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>

#include "core/io/safetensors.h"
#include "datasets/convert_formats.h"
#include "datasets/image_codec.h"
#include "datasets/resample.h"

namespace fs = std::filesystem;

namespace cm::data {

namespace {

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp";
}

void list_images(const fs::path& dir, std::vector<fs::path>& out) {
  std::vector<fs::directory_entry> entries;
  for (const auto& e : fs::directory_iterator(dir)) entries.push_back(e);
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  for (const auto& e : entries) {
    if (e.is_directory())
      list_images(e.path(), out);
    else if (is_image_name(e.path()))
      out.push_back(e.path());
  }
}

class FileListSource : public RecordSource {
 public:
  FileListSource(std::vector<fs::path> files, std::vector<int64_t> labels)
      : files_(std::move(files)), labels_(std::move(labels)) {}
  int64_t count() const override { return int64_t(files_.size()); }
  void seek(int64_t index) override { next_ = index; }
  void read(RawRecord& r) override {
    const fs::path& p = files_.at(size_t(next_));
    r.origin = fmt::format("{} (record {})", p.string(), next_);
    r.bytes = cm::read_file(p.string());
    r.label = labels_.empty() ? -1 : labels_[size_t(next_)];
    ++next_;
  }

 private:
  std::vector<fs::path> files_;
  std::vector<int64_t> labels_;
  int64_t next_ = 0;
};

// Labels = index of each file's class name in the sorted set of names.
std::vector<int64_t> index_labels(const std::vector<std::string>& names, int64_t* num_classes) {
  std::set<std::string> uniq(names.begin(), names.end());
  std::map<std::string, int64_t> index;
  for (const auto& n : uniq) index.emplace(n, int64_t(index.size()));
  std::vector<int64_t> labels;
  for (const auto& n : names) labels.push_back(index[n]);
  *num_classes = int64_t(uniq.size());
  return labels;
}

std::vector<fs::path> list_or_fail(const std::string& src) {
  if (!fs::is_directory(src)) throw std::runtime_error(fmt::format("'{}' is not a directory of images", src));
  std::vector<fs::path> files;
  list_images(src, files);
  if (files.empty()) throw std::runtime_error(fmt::format("'{}' holds no .jpg/.jpeg/.png/.webp images", src));
  return files;
}

std::function<void(const RawRecord&, uint8_t*)> resizing_transform(const std::string& mode, int64_t res, int64_t channels,
                                                                    int64_t height, int64_t width) {
  return [=](const RawRecord& r, uint8_t* out) {
    Image img = decode_image(reinterpret_cast<const uint8_t*>(r.bytes.data()), r.bytes.size(), channels, r.origin);
    if (mode == "adm") {
      img = center_crop_arr(img, res);
    } else if (mode == "box") {
      img = lsun_resize_crop(img, res);
    } else if (img.height != height || img.width != width) {
      throw std::runtime_error(fmt::format("{}: image is {}x{}, the dataset's first image is {}x{} (use --resolution R "
                                           "to resize)", r.origin, img.width, img.height, width, height));
    }
    std::copy(img.pixels.begin(), img.pixels.end(), out);
  };
}

}  // namespace

Converter make_imagenet_converter(const ConvertOptions& o) {
  auto files = list_or_fail(o.src);
  static const std::regex wnid(R"(n\d{8})");
  std::vector<std::string> classes;
  for (const auto& f : files) {
    const std::string parent = f.parent_path().filename().string();
    const std::string stem = f.filename().string();
    const std::string prefix = stem.substr(0, stem.find('_'));
    if (std::regex_match(parent, wnid))
      classes.push_back(parent);
    else if (stem.find('_') != std::string::npos && std::regex_match(prefix, wnid))
      classes.push_back(prefix);
    else
      throw std::runtime_error(fmt::format("{}: no WNID class (folder nXXXXXXXX/ or file name nXXXXXXXX_*.JPEG); "
                                           "use format 'folder' for other image folders", f.string()));
  }
  const int64_t res = o.resolution ? o.resolution : 64;
  const int64_t channels = o.channels ? o.channels : 3;
  Converter c;
  c.info.num_classes = 0;
  auto labels = index_labels(classes, &c.info.num_classes);
  c.source = std::make_unique<FileListSource>(std::move(files), std::move(labels));
  c.info.source_format = "imagenet";
  c.info.source = fs::absolute(o.src).string();
  c.info.preprocessing = fmt::format("cm/image_datasets.py center_crop_arr: BOX halving while short side >= {}, BICUBIC "
                                     "to short side {}, centre crop {}x{}; labels = index of the WNID in sorted order",
                                     2 * res, res, res, res);
  c.info.height = c.info.width = res;
  c.info.channels = channels;
  c.info.name = o.name.empty() ? fmt::format("imagenet{}-{}", res, o.split) : o.name;
  c.transform = resizing_transform("adm", res, channels, res, res);
  return c;
}

Converter make_folder_converter(const ConvertOptions& o) {
  auto files = list_or_fail(o.src);
  // Labelled when every image lies in a class subfolder (first level below src).
  std::vector<std::string> classes;
  bool all_in_subdirs = true;
  const fs::path root = fs::path(o.src);
  for (const auto& f : files) {
    fs::path rel = fs::relative(f, root);
    if (std::distance(rel.begin(), rel.end()) < 2) {
      all_in_subdirs = false;
      break;
    }
    classes.push_back(rel.begin()->string());
  }
  const std::string mode = !o.resize.empty() ? o.resize : (o.resolution ? "adm" : "none");
  if (mode != "adm" && mode != "box" && mode != "none")
    throw std::invalid_argument(fmt::format("--resize '{}': expected adm, box or none", mode));
  if (mode != "none" && !o.resolution) throw std::invalid_argument("--resize adm/box needs --resolution");
  const int64_t channels = o.channels ? o.channels : 3;
  Converter c;
  std::vector<int64_t> labels;
  if (all_in_subdirs) labels = index_labels(classes, &c.info.num_classes);
  int64_t height = o.resolution, width = o.resolution;
  if (mode == "none") {  // geometry of the first image
    const std::string bytes = cm::read_file(files.front().string());
    Image first = decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), channels, files.front().string());
    height = first.height;
    width = first.width;
    if (o.resolution && (height != o.resolution || width != o.resolution))
      throw std::invalid_argument("--resize none with --resolution: images are not that size");
  }
  c.source = std::make_unique<FileListSource>(std::move(files), std::move(labels));
  c.info.source_format = "folder";
  c.info.source = fs::absolute(o.src).string();
  c.info.preprocessing = mode == "adm"   ? fmt::format("center_crop_arr to {}x{} (BOX halving, BICUBIC, centre crop)", height, width)
                         : mode == "box" ? fmt::format("BOX resize to short side {}, centre crop (LSUN script)", height)
                                         : "none (decoded as is)";
  c.info.height = height;
  c.info.width = width;
  c.info.channels = channels;
  c.info.name = o.name.empty() ? fmt::format("folder-{}", o.split) : o.name;
  c.transform = resizing_transform(mode, o.resolution, channels, height, width);
  return c;
}

}  // namespace cm::data
