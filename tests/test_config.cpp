// Config composition, overrides and binding errors: each error names the full key path and, where it can,
// the nearest valid key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include "core/config.h"
#include "core/io/safetensors.h"
#include "datasets/archive.h"  // the .npz cm sample writes
#include "recipes/recipe.h"
#include "support/paths.h"

using namespace cm;

namespace {
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("other exception: ") + e.what();
  }
  return "no error";
}
}  // namespace

TEST(Config, ComposesDefaultsBaseAndRecipe) {
  Config c = Config::compose("toy_ct");
  ConfigReader m(c, "method");
  EXPECT_EQ(m.get_string("name", ""), "ct");
  EXPECT_EQ(m.get_int("s0", 0), 10);  // the recipe overrides the group's 2
  EXPECT_DOUBLE_EQ(m.get_double("sigma_max", 0), 80.0);
  ConfigReader t(c, "train");
  EXPECT_EQ(t.get_int("micro_batches", 0), 1);  // from _base.toml
  ConfigReader g(c, "groups");
  EXPECT_EQ(g.get_string("dataset", ""), "toy_ring");
}

TEST(Config, OverridesSetGroupAddDelete) {
  Config c = Config::compose("toy_ct", {"train.lr=3e-4", "dataset=toy_moons", "+run.note=\"hi\"", "train.ema_rates=[0.9, 0.99]", "~sample.count"});
  ConfigReader t(c, "train");
  EXPECT_DOUBLE_EQ(t.get_double("lr", 0), 3e-4);
  EXPECT_EQ(t.get_double_list("ema_rates", {}), (std::vector<double>{0.9, 0.99}));
  EXPECT_EQ(ConfigReader(c, "dataset").get_string("name", ""), "moons");
  EXPECT_EQ(ConfigReader(c, "run").get_string("note", ""), "hi");
  EXPECT_FALSE(c.has("sample.count"));
  // Bare words are strings.
  Config d = Config::compose("toy_ct", {"train.optimizer=adam"});
  EXPECT_EQ(ConfigReader(d, "train").get_string("optimizer", ""), "adam");
}

TEST(Config, UnknownOverrideKeyNamesNearestKey) {
  auto msg = error_of([] { Config::compose("toy_ct", {"train.lrr=1e-3"}); });
  EXPECT_NE(msg.find("'train.lrr' is not in the config"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.lr'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("+train.lrr=1e-3"), std::string::npos) << msg;
}

TEST(Config, UnknownKeyInRecipeIsRejectedAtBinding) {
  auto msg = error_of([] { Recipe::load("toy_ct", {"+train.ema_rate=0.99"}); });
  EXPECT_NE(msg.find("unknown key 'train.ema_rate'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.ema_rates'"), std::string::npos) << msg;
  auto msg2 = error_of([] { Recipe::load("toy_ct", {"+method.mu00=0.9"}); });
  EXPECT_NE(msg2.find("unknown key 'method.mu00'"), std::string::npos) << msg2;
  EXPECT_NE(msg2.find("'method.mu0'"), std::string::npos) << msg2;
}

TEST(Config, WrongTypeNamesKeyAndFoundValue) {
  auto msg = error_of([] { Recipe::load("toy_ct", {"train.steps=\"many\""}); });
  EXPECT_NE(msg.find("'train.steps' must be an integer, found string"), std::string::npos) << msg;
  auto msg2 = error_of([] { Recipe::load("toy_ct", {"train.lr=fast"}); });
  EXPECT_NE(msg2.find("'train.lr' must be a number, found string"), std::string::npos) << msg2;
  auto msg3 = error_of([] { Recipe::load("toy_ct", {"train.ema_rates=[0.9, \"x\"]"}); });
  EXPECT_NE(msg3.find("'train.ema_rates[1]' must be numbers"), std::string::npos) << msg3;
}

TEST(Config, BadGroupOptionListsOptions) {
  auto msg = error_of([] { Config::compose("toy_ct", {"dataset=toy_rnig"}); });
  EXPECT_NE(msg.find("'toy_rnig' is not an option of config group 'dataset'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'toy_ring'"), std::string::npos) << msg;
  auto msg2 = error_of([] { Recipe::load("toy_ct", {"method.name=cdd"}); });
  EXPECT_NE(msg2.find("'method.name' = \"cdd\" is not one of"), std::string::npos) << msg2;
}

TEST(Config, MissingRequiredValue) {
  auto msg = error_of([] { Recipe::load("toy_ct", {"~train.lr"}); });
  EXPECT_NE(msg.find("missing required key 'train.lr'"), std::string::npos) << msg;
  auto msg2 = error_of([] { Recipe::load("toy_cd", {"~method.teacher"}); });
  EXPECT_NE(msg2.find("missing required key 'method.teacher'"), std::string::npos) << msg2;
}

TEST(Config, UnknownRecipeSuggests) {
  auto msg = error_of([] { Config::compose("toy_cct"); });
  EXPECT_NE(msg.find("recipe 'toy_cct' not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'toy_ct'"), std::string::npos) << msg;
}

TEST(Config, SyntaxErrorNamesFileAndLine) {
  auto dir = test::make_temp_dir("cfg");
  std::ofstream(dir + "/bad.toml") << "[train]\nsteps = = 3\n";
  auto msg = error_of([&] { Config::compose(dir + "/bad.toml"); });
  EXPECT_NE(msg.find("bad.toml:2"), std::string::npos) << msg;
  std::filesystem::remove_all(dir);
}

TEST(Config, DiffKeysAndHash) {
  Config a = Config::compose("toy_ct"), b = Config::compose("toy_ct", {"train.log_every=7", "train.lr=0.5"});
  EXPECT_NE(a.hash(), b.hash());
  EXPECT_EQ(a.diff_keys(b, {"train.log_every"}), std::vector<std::string>{"train.lr"});
  EXPECT_EQ(a.hash(), Config::compose("toy_ct").hash());
}

TEST(Cli, ConfigAndScheduleCommands) {
  std::string out;
  ASSERT_EQ(test::run_command(test::cm_binary() + " config toy_ct train.lr=0.25", &out), 0) << out;
  EXPECT_NE(out.find("lr = 0.25"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(test::cm_binary() + " config toy_ct train.lrr=0.25", &out), 2);
  EXPECT_NE(out.find("did you mean 'train.lr'"), std::string::npos) << out;
  // The CT schedule at k = 0, K/2, K with s0 = 10, s1 = 150, mu0 = 0.95, K = 3000.
  ASSERT_EQ(test::run_command(test::cm_binary() + " schedule toy_ct method.s0=10 method.s1=150 method.mu0=0.95 train.steps=3000 "
                                                   "--steps 0,1500,3000 --json", &out), 0) << out;
  EXPECT_NE(out.find("{\"step\": 0, \"N\": 10, \"mu\": 0.944601"), std::string::npos) << out;     // s = 9: 0.95^(10/9)
  EXPECT_NE(out.find("{\"step\": 1500, \"N\": 108, \"mu\": 0.995217"), std::string::npos) << out;  // sqrt(0.5(151^2-100)+100) = 107.2
  EXPECT_NE(out.find("{\"step\": 3000, \"N\": 151, \"mu\": 0.996586"), std::string::npos) << out;  // 0.95^(10/150)
  for (const char* cmd : {"train", "sample", "config", "schedule"}) {
    EXPECT_EQ(test::run_command(test::cm_binary() + " " + cmd + " --help", &out), 0) << cmd;
    EXPECT_NE(out.find("Usage: cm"), std::string::npos) << out;
  }
}

// Train briefly, then sample from the run's EMA weights with `cm sample`.
TEST(Cli, TrainThenSample) {
  auto dir = test::make_temp_dir("cli");
  std::string out;
  ASSERT_EQ(test::run_command(test::cm_binary() + " train toy_cd train.steps=20 train.log_every=10 sample.eval_count=500 run.dir=" + dir +
                                  "/run",
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("step      10/20 | loss"), std::string::npos) << out;
  EXPECT_NE(out.find("ETA"), std::string::npos) << out;
  for (const char* f : {"config.toml", "overrides.txt", "meta.json", "metrics.jsonl", "samples.png", "model.safetensors",
                        "ema_0.995.safetensors", "final.json"})
    EXPECT_TRUE(std::filesystem::exists(dir + "/run/" + f)) << f;
  ASSERT_EQ(test::run_command(test::cm_binary() + " sample toy_cd --weights " + dir + "/run/ema_0.995.safetensors --ts 0,8 --count 50 --out " +
                                  dir + "/s",
                              &out),
            0)
      << out;
  // 2-D toys: arr_0 holds the float32 points (image models: uint8 NHWC, tests/test_sampling.cpp).
  data::ZipArchive npz(dir + "/s/samples_50x2.npz");
  ASSERT_NE(npz.find("arr_0.npy"), nullptr);
  auto arr = npz.open(*npz.find("arr_0.npy"));
  auto h = data::read_npy_header(*arr);
  EXPECT_EQ(h.descr, "<f4");
  EXPECT_EQ(h.shape, (std::vector<int64_t>{50, 2}));
  EXPECT_TRUE(std::filesystem::exists(dir + "/s/samples.png"));
  // Wrong weights are named precisely.
  EXPECT_NE(test::run_command(test::cm_binary() + " sample toy_cd model.width=64 --weights " + dir + "/run/model.safetensors --out " + dir + "/t", &out), 0);
  EXPECT_NE(out.find("mis-shaped"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}
