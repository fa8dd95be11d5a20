// FID during training ([eval]): a 2-rank run logs FID every eval.every_images images beside the loss,
// computes the reference statistics of its dataset once over both ranks (cached in run.dir, reused on
// resume), and its final FID is the one `cm sample` + `cm eval` give for the same weights, seed and count.
// The Inception network is the TorchScript stand-in of tests/support/standin_inception.h.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include "core/io/json.h"
#include "core/rng.h"
#include "core/io/safetensors.h"
#include "datasets/image_codec.h"
#include "recipes/eval/image_sets.h"
#include "datasets/shards.h"
#include "support/datasets_fixtures.h"
#include "support/mpi_launch.h"
#include "support/paths.h"
#include "support/standin_inception.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

std::vector<Json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<Json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(parse_json(line, path));
  return out;
}

double num(const Json& j, const std::string& key) {
  const Json* v = j.get(key);
  return v && v->kind == Json::Num ? v->num : std::nan("");
}

}  // namespace

TEST(TrainEval, FidDuringTrainingMatchesSampleAndEval) {
  const std::string dir = test::make_temp_dir("train_eval");
  test::write_grey_dataset(dir + "/data", 48);
  const std::string net = test::save_standin_inception(dir + "/inception.pt", false);
  const std::string run = dir + "/run";
  const std::string recipe = fmt::format(
      "fmnist_ict_mlp dataset.path={}/data run.dir={} model.width=64 model.depth=2 train.batch=16 train.log_every=4 "
      "+method.curriculum_steps=16 train.sample_every=4 checkpoint.every=0 sample.count=4 eval.every_images=64 eval.count=30 eval.batch=10 eval.inception={}",
      dir, run, net);
  std::string out;
  ASSERT_EQ(test::run_command(test::mpirun_prefix(2, 600) + test::cm_binary() + " train " + recipe + " train.steps=12 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("FID"), std::string::npos) << out;

  // FID lines at 64, 128, 192 images (steps 4, 8, 12), beside the loss lines.
  std::vector<int64_t> fid_steps;
  double last = std::nan(""), last_1step = std::nan("");
  int losses = 0;
  for (auto& j : read_jsonl(run + "/metrics.jsonl")) {
    if (j.get("fid")) {
      fid_steps.push_back(j.at("step", "metrics").integer);
      last = num(j, "fid");
      last_1step = num(j, "fid_1step");  // sample.ts = [0, 10] is two steps: the one-step FID comes beside it
      EXPECT_EQ(j.at("fid_samples", "metrics").integer, 30);
      EXPECT_GT(num(j, "fid"), 0);
    }
    if (j.get("loss")) ++losses;
  }
  EXPECT_EQ(fid_steps, (std::vector<int64_t>{4, 8, 12}));
  EXPECT_EQ(losses, 3);
  auto final_json = parse_json(read_file(run + "/final.json"), "final.json");
  EXPECT_DOUBLE_EQ(num(final_json, "fid"), last);
  EXPECT_DOUBLE_EQ(num(final_json, "fid_1step"), last_1step);
  EXPECT_NE(last, last_1step);

  // The cached reference statistics are the dataset's, as `cm eval ref-stats` computes them in one process.
  // One cache, named by the network kind and a digest of (network file, reference): eval_ref_stats_inception_<16 hex>.npz.
  std::vector<std::string> caches;
  for (const auto& e : fs::directory_iterator(run))
    if (e.path().filename().string().rfind("eval_ref_stats_", 0) == 0) caches.push_back(e.path().string());
  ASSERT_EQ(caches.size(), 1u);
  const std::string cache = caches[0];
  EXPECT_EQ(fs::path(cache).filename().string().size(), std::string("eval_ref_stats_inception_0123456789abcdef.npz").size()) << cache;
  ASSERT_EQ(test::run_command(fmt::format("{} eval ref-stats {}/data --out {}/ref.npz --inception {} --quiet 2>&1", test::cm_binary(), dir, dir, net),
                              &out), 0) << out;
  for (const char* k : {"mu", "sigma"})
    EXPECT_LT((data::read_npz_tensor(cache, k) - data::read_npz_tensor(dir + "/ref.npz", k)).abs().max().item<double>(), 1e-9)
        << k;

  // The same FID from the saved EMA through cm sample and cm eval (same seed, count and sample.ts).
  ASSERT_EQ(test::run_command(fmt::format("{} sample {} --weights {}/ema_0.99.safetensors --count 30 --seed 12345 --out {}/s --quiet 2>&1",
                                          test::cm_binary(), recipe, run, dir), &out), 0) << out;
  ASSERT_EQ(test::run_command(fmt::format("{} eval {}/s/samples_30x28x28x1.npz --ref {}/ref.npz --metrics fid --inception {} --json {}/e.json --quiet 2>&1",
                                          test::cm_binary(), dir, dir, net, dir), &out), 0) << out;
  const double fid = num(parse_json(read_file(dir + "/e.json"), "e.json"), "fid");
  // 1e-5: the two paths make the same samples up to float rounding (the trainer and cm sample may split the
  // matrix products over different thread counts), and one pixel on a uint8 rounding boundary moves the FID
  // of 30 samples by about 1e-6 relative; another EMA or sample set moves it by far more.
  EXPECT_NEAR(fid, last, 1e-5 * std::max(1.0, last)) << out;
  ASSERT_EQ(test::run_command(fmt::format("{} sample {} --weights {}/ema_0.99.safetensors --count 30 --seed 12345 --ts 0 --out {}/s1 --quiet 2>&1",
                                          test::cm_binary(), recipe, run, dir), &out), 0) << out;
  ASSERT_EQ(test::run_command(fmt::format("{} eval {}/s1/samples_30x28x28x1.npz --ref {}/ref.npz --metrics fid --inception {} --json {}/e1.json --quiet 2>&1",
                                          test::cm_binary(), dir, dir, net, dir), &out), 0) << out;
  EXPECT_NEAR(num(parse_json(read_file(dir + "/e1.json"), "e1.json"), "fid"), last_1step, 1e-5 * std::max(1.0, last_1step));

  // cm ts-search on the trained model: candidates 1, 4, 7 of a 10-point grid, then every index within 2 of the
  // best; each FID is the one cm sample + cm eval give for that ts, and 2 ranks find the same figures.
  const std::string search = fmt::format("{} ts-search {} --weights {}/ema_0.99.safetensors --ref {}/ref.npz --inception {} --grid 10 "
                                         "--stride 3 --refine --count 20 --batch 10 --quiet",
                                         test::cm_binary(), recipe, run, dir, net);
  ASSERT_EQ(test::run_command(search + " --json " + dir + "/ts1.json 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("best: --ts 0,"), std::string::npos) << out;
  ASSERT_EQ(test::run_command(test::mpirun_prefix(2, 600) + search + " --json " + dir + "/ts2.json 2>&1", &out), 0) << out;
  auto ts1 = parse_json(read_file(dir + "/ts1.json"), "ts1"), ts2 = parse_json(read_file(dir + "/ts2.json"), "ts2");
  const auto& res1 = ts1.at("results", "ts1").arr;
  const auto& res2 = ts2.at("results", "ts2").arr;
  ASSERT_GE(res1.size(), 4u);
  ASSERT_EQ(res1.size(), res2.size());
  double min_fid = 1e300;
  for (size_t i = 0; i < res1.size(); ++i) {
    EXPECT_EQ(res1[i].at("index", "ts").integer, res2[i].at("index", "ts").integer);
    // 1e-5 as above: one process runs the network on 2 threads, each of 2 ranks on 1, so the samples agree to
    // float rounding and a uint8 boundary flip moves the FID of 20 samples by ~2e-6 relative (seen).
    EXPECT_NEAR(num(res1[i], "fid"), num(res2[i], "fid"), 1e-5 * num(res1[i], "fid"));
    min_fid = std::min(min_fid, num(res1[i], "fid"));
  }
  const Json& best = ts1.at("best", "ts1");
  EXPECT_EQ(num(best, "fid"), min_fid);
  const int64_t bi = best.at("index", "best").integer;
  ASSERT_EQ(test::run_command(fmt::format("{} sample {} --weights {}/ema_0.99.safetensors --count 20 --ts 0,{},9 --grid 10 --out {}/t --quiet 2>&1",
                                          test::cm_binary(), recipe, run, bi, dir), &out), 0) << out;
  ASSERT_EQ(test::run_command(fmt::format("{} eval {}/t/samples_20x28x28x1.npz --ref {}/ref.npz --metrics fid --inception {} --json {}/t.json --quiet 2>&1",
                                          test::cm_binary(), dir, dir, net, dir), &out), 0) << out;
  EXPECT_NEAR(num(parse_json(read_file(dir + "/t.json"), "t.json"), "fid"), min_fid, 1e-6 * min_fid);

  // Resumed to 16 steps: the statistics come from the cache, one more FID line at step 16.
  ASSERT_EQ(test::run_command(test::mpirun_prefix(2, 600) + test::cm_binary() + " train " + recipe + " train.steps=16 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("statistics cached in"), std::string::npos) << out;
  fid_steps.clear();
  for (auto& j : read_jsonl(run + "/metrics.jsonl"))
    if (j.get("fid")) fid_steps.push_back(j.at("step", "metrics").integer);
  EXPECT_EQ(fid_steps, (std::vector<int64_t>{4, 8, 12, 16}));

  // cm report: one self-contained page that headless Chromium renders without console errors, with the
  // loss, FID, throughput and schedule charts and every picture decoded.
  ASSERT_EQ(test::run_command(fmt::format("{} report {} --out {}/report.html 2>&1", test::cm_binary(), run, dir), &out), 0) << out;
  const std::string html = read_file(dir + "/report.html");
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg")) << "the page must not fetch anything";
  EXPECT_EQ(html.find("https://"), std::string::npos);
  int64_t pictures = fs::exists(run + "/samples.png") ? 1 : 0;
  for (auto& e : fs::directory_iterator(run + "/samples")) pictures += e.path().extension() == ".png";
  ASSERT_GE(pictures, 4);  // steps 4, 8, 12, 16 and the final one
  ASSERT_TRUE(fs::exists("/usr/bin/chromium")) << "the report test needs Debian's chromium (launch/setup.sh installs it)";
  const std::string chrome = fmt::format("timeout 120 /usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --user-data-dir={}/chrome "
                                         "--enable-logging=stderr --v=0 --virtual-time-budget=5000 ", dir);
  ASSERT_EQ(test::run_command(fmt::format("{} --dump-dom file://{}/report.html > {}/dom.html 2> {}/chrome.log", chrome, dir, dir, dir), &out), 0)
      << read_file(dir + "/chrome.log");
  const std::string dom = read_file(dir + "/dom.html");
  EXPECT_NE(dom.find(fmt::format("data-pictures=\"{}\"", pictures)), std::string::npos) << dom.substr(0, 2000);
  EXPECT_NE(dom.find("data-charts=\"6\""), std::string::npos) << "loss, FID, one-step FID, throughput, N, mu";
  EXPECT_NE(dom.find("FID (in-training"), std::string::npos);
  EXPECT_EQ(read_file(dir + "/chrome.log").find("CONSOLE"), std::string::npos) << read_file(dir + "/chrome.log");
  ASSERT_EQ(test::run_command(fmt::format("{} --window-size=1300,3000 --screenshot={}/shot.png file://{}/report.html 2>&1", chrome, dir, dir), &out), 0)
      << out;
  const std::string shot = read_file(dir + "/shot.png");
  data::Image img = data::decode_image(reinterpret_cast<const uint8_t*>(shot.data()), shot.size(), 3, "shot.png");
  EXPECT_EQ(img.width, 1300);
  int64_t ink = 0, blue = 0;
  for (int64_t y = 0; y < img.height; ++y)
    for (int64_t x = 0; x < img.width; ++x) {
      const int r = img.at(y, x, 0), g = img.at(y, x, 1), b = img.at(y, x, 2);
      ink += r + g + b < 600;
      blue += r < 90 && g > 60 && g < 140 && b > 150;  // the curves' #1f5fbf
    }
  EXPECT_GT(ink, img.width * img.height / 50) << "the screenshot is nearly blank";
  EXPECT_GT(blue, 500) << "no chart curves in the screenshot";

  // A missing Inception file stops the run before training, saying where to get it.
  ASSERT_NE(test::run_command(test::cm_binary() + " train " + recipe + " train.steps=4 run.dir=" + dir + "/run2 eval.inception=" + dir +
                                  "/missing.pt 2>&1", &out), 0);
  EXPECT_NE(out.find("inception-2015-12-05.pt"), std::string::npos) << out;
  EXPECT_EQ(out.find("step       1"), std::string::npos) << out;
  fs::remove_all(dir);
}
