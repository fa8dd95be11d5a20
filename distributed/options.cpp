// Binding of the `dist` config section (see options.h).
#include "distributed/options.h"

#include <fmt/format.h>
#include "core/config.h"

namespace cm::dist {

ReducerOptions DistOptions::reducer() const {
  ReducerOptions r;
  r.bucket_mb = bucket_mb;
  r.overlap = overlap;
  return r;
}

std::string DistOptions::trace_path(int rank) const {
  return trace_dir.empty() ? std::string() : fmt::format("{}/trace-rank{}.json", trace_dir, rank);
}

DistOptions read_dist_options(ConfigReader& r) {
  DistOptions o;
  o.bucket_mb = r.get_double("bucket_mb", o.bucket_mb);
  if (!(o.bucket_mb > 0)) throw ConfigError(fmt::format("{} must be > 0 (got {})", r.key_path("bucket_mb"), o.bucket_mb));
  o.overlap = r.get_bool("overlap", o.overlap);
  o.trace_dir = r.get_string("trace_dir", o.trace_dir);
  return o;
}

}  // namespace cm::dist
