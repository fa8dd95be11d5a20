// The `dist` config section: how gradients travel between ranks, bound once into DistOptions.
//   [dist]
//   bucket_mb   = 25.0    # gradient bucket capacity (MiB)
//   overlap     = true    # all-reduce buckets during backward
//   trace_dir   = ""      # write trace-rank<R>.json Chrome timelines there ("" = off)
// The other multi-rank settings belong to the run and live in [train]: device (which GPU or the CPU),
// watchdog_s (the watchdog's timeout, WorldOptions::timeout_s) and check_every (cross-rank weight checks).
#pragma once
#include <cstdint>
#include <string>
#include "distributed/reducer.h"

namespace cm {
class ConfigReader;
}

namespace cm::dist {

struct DistOptions {
  double bucket_mb = 25.0;
  bool overlap = true;
  std::string trace_dir;

  ReducerOptions reducer() const;
  // "" when tracing is off, else trace_dir/trace-rank<rank>.json
  std::string trace_path(int rank) const;
};

// Reads (and marks as known) the keys above from a `dist` section reader; validates ranges.
DistOptions read_dist_options(ConfigReader& dist_section);

}  // namespace cm::dist
