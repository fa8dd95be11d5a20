// The `dist` config section, bound once into DistOptions (keys, defaults and meaning below):
//   [dist]
//   device      = "auto"  # auto | cpu | cuda  (auto: cuda:<local rank> when available)
//   bucket_mb   = 25.0    # gradient bucket capacity (MiB)
//   overlap     = true    # all-reduce buckets during backward
//   timeout_s   = 600.0   # watchdog: a collective longer than this aborts the job (0 = off)
//   check_every = 1000    # steps between cross-rank consistency checks of params / EMAs (0 = never)
//   trace_dir   = ""      # write trace-rank<R>.json Chrome timelines there ("" = off)
#pragma once
#include <cstdint>
#include <string>
#include "distributed/reducer.h"
#include "distributed/world.h"

namespace cm {
class ConfigReader;
}

namespace cm::dist {

struct DistOptions {
  std::string device = "auto";
  double bucket_mb = 25.0;
  bool overlap = true;
  double timeout_s = 600.0;
  int64_t check_every = 1000;
  std::string trace_dir;

  WorldOptions world() const;
  ReducerOptions reducer() const;
  // "" when tracing is off, else trace_dir/trace-rank<rank>.json
  std::string trace_path(int rank) const;
};

// Reads (and marks as known) the keys above from a `dist` section reader; validates ranges.
DistOptions read_dist_options(ConfigReader& dist_section);

}  // namespace cm::dist
