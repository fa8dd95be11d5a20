// The observers `cm train` wires into a run (recipes/trainer.h), each one job:
//   RunDirectory    RUN_DIR/config.toml, overrides.txt, meta.json, samples/, and metrics.jsonl opened
//   ProgressLog     the start-up lines, a progress line and a metrics.jsonl line every train.log_every steps
//   SamplePictures  RUN_DIR/samples/step_*.png every train.sample_every steps, and samples.png at the end
//   FidDuringTraining  [eval]: FID every eval.every_images (and at the end), lines in metrics.jsonl
//   ToyQualityFigures  toys: sliced Wasserstein distances of the final samples (TrainResult::quality)
//   FinalExports    model.safetensors, ema_<rate>.safetensors and final.json in the run directory
#pragma once
#include <fstream>
#include <memory>
#include "recipes/trainer.h"

namespace cm {

// The run directory's metrics.jsonl, shared by the observers that write lines to it (rank 0).
class MetricsFile {
 public:
  void open(const std::string& path, bool append);
  void write(const std::string& json_line);  // one object, without the newline
  bool is_open() const { return out_.is_open(); }

 private:
  std::ofstream out_;
};

// Adds the standard observers above, in that order (the order of their on_finish work).
void add_standard_observers(Trainer& trainer);

// Toy data: sliced Wasserstein distances of 1-step / 2-step (or EDM Heun) samples of the sampling
// weights (sample.ema) to fresh data, and between two fresh data sets (the floor). Empty for images and
// on ranks other than 0.
std::map<std::string, double> toy_quality(const Recipe& r, DataSource& data, Objective& obj, EmaSet& emas, torch::Device device,
                                          bool is_main);

}  // namespace cm
