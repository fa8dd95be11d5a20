// The paper's recipes: every one resolves, carries the published numbers (checked against the table below,
// typed in from spec section 10 and the reference launch script), and plans on the world it was published
// for (`cm plan` with the dataset, teacher and LPIPS files present).
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <set>
#include "core/config.h"
#include "recipes/recipe.h"
#include "support/paths.h"

using namespace cm;
namespace fs = std::filesystem;

namespace {

struct Published {
  const char* recipe;
  const char* method;  // edm | cd | ct | ict
  const char* arch;    // ncsnpp | adm
  int64_t resolution;
  const char* metric;  // "" for edm
  int64_t n_or_s0;     // CD: N; CT/iCT: s0
  int64_t s1;          // CT/iCT: s1
  double mu;           // CD: mu; CT: mu0
  int64_t batch;
  double lr;
  int64_t steps;
  std::vector<double> emas;
  int64_t nodes, gpus;  // the world the plan is checked on
};

const double kE3 = 0.9999432189950708;
const std::vector<Published>& table() {
  static const std::vector<Published> t = {
      // CIFAR-10, NCSN++ (spec section 10; iCT: section 5)
      {"cifar10_edm", "edm", "ncsnpp", 32, "", 0, 0, 0, 512, 1e-3, 390625, {0.99929}, 1, 8},
      {"cifar10_cd_lpips", "cd", "ncsnpp", 32, "lpips", 18, 0, 0.0, 512, 4e-4, 800000, {0.9999}, 1, 8},
      {"cifar10_cd_l2", "cd", "ncsnpp", 32, "l2", 18, 0, 0.0, 512, 4e-4, 800000, {0.9999}, 1, 8},
      {"cifar10_cd_l1", "cd", "ncsnpp", 32, "l1", 18, 0, 0.0, 512, 2e-4, 800000, {0.9999}, 1, 8},
      {"cifar10_ct", "ct", "ncsnpp", 32, "lpips", 2, 150, 0.9, 512, 4e-4, 800000, {0.9999}, 1, 8},
      {"cifar10_ict", "ict", "ncsnpp", 32, "pseudo_huber", 10, 1280, 0.0, 1024, 1e-4, 400000, {0.99993}, 1, 8},
      // ImageNet-64, class-conditional ADM (launch.sh)
      {"imagenet64_edm", "edm", "adm", 64, "", 0, 0, 0, 4096, 1e-4, 610000, {0.999, 0.9999, kE3}, 8, 8},
      {"imagenet64_cd_lpips", "cd", "adm", 64, "lpips", 40, 0, 0.95, 2048, 8e-6, 600000, {0.999, 0.9999, kE3}, 8, 8},
      {"imagenet64_cd_l2", "cd", "adm", 64, "l2", 40, 0, 0.95, 2048, 8e-6, 600000, {0.999, 0.9999, kE3}, 8, 8},
      {"imagenet64_ct", "ct", "adm", 64, "lpips", 2, 200, 0.95, 2048, 1e-4, 800000, {0.999, 0.9999, kE3}, 8, 8},
      // LSUN 256, ADM (launch.sh: batch 256; CT lr 5e-5)
      {"lsun_bedroom256_edm", "edm", "adm", 256, "", 0, 0, 0, 256, 1e-4, 600000, {0.999, 0.9999, kE3}, 4, 8},
      {"lsun_bedroom256_cd_lpips", "cd", "adm", 256, "lpips", 40, 0, 0.95, 256, 1e-5, 600000, {0.9999, 0.99994, kE3}, 4, 8},
      {"lsun_bedroom256_cd_l2", "cd", "adm", 256, "l2", 40, 0, 0.95, 256, 1e-5, 600000, {0.9999, 0.99994, kE3}, 4, 8},
      {"lsun_bedroom256_ct", "ct", "adm", 256, "lpips", 2, 150, 0.95, 256, 5e-5, 1000000, {0.9999, 0.99994, kE3}, 4, 8},
      {"lsun_cat256_edm", "edm", "adm", 256, "", 0, 0, 0, 256, 1e-4, 600000, {0.999, 0.9999, kE3}, 4, 8},
      {"lsun_cat256_cd_lpips", "cd", "adm", 256, "lpips", 40, 0, 0.95, 256, 1e-5, 600000, {0.9999, 0.99994, kE3}, 4, 8},
      {"lsun_cat256_cd_l2", "cd", "adm", 256, "l2", 40, 0, 0.95, 256, 1e-5, 600000, {0.9999, 0.99994, kE3}, 4, 8},
      {"lsun_cat256_ct", "ct", "adm", 256, "lpips", 2, 150, 0.95, 256, 5e-5, 1000000, {0.9999, 0.99994, kE3}, 4, 8},
  };
  return t;
}

}  // namespace

TEST(Recipes, EveryPublishedRunHasARecipeWithThePublishedNumbers) {
  for (const auto& p : table()) {
    SCOPED_TRACE(p.recipe);
    const Recipe r = Recipe::load(p.recipe, {});
    EXPECT_EQ(r.method.name, p.method);
    ConfigReader model(r.config, "model");
    EXPECT_EQ(model.get_string("arch", ""), p.arch);
    ConfigReader ds(r.config, "dataset");
    EXPECT_EQ(ds.get_int("resolution", 0), p.resolution);
    EXPECT_EQ(r.train.batch, p.batch);
    EXPECT_DOUBLE_EQ(r.train.optimizer.lr, p.lr);
    EXPECT_EQ(r.train.steps, p.steps);
    EXPECT_EQ(r.train.ema_rates, p.emas);
    EXPECT_EQ(r.train.optimizer.name, std::string(p.recipe) == "cifar10_edm" ? "adam" : "radam");
    if (std::string(p.method) == "edm") continue;
    EXPECT_EQ(to_string(r.method.metric), p.metric);
    EXPECT_DOUBLE_EQ(r.method.range.sigma_min, 0.002);
    EXPECT_DOUBLE_EQ(r.method.range.sigma_max, 80.0);
    if (std::string(p.method) == "cd") {
      EXPECT_EQ(r.method.curriculum.fixed.num_scales, p.n_or_s0);
      EXPECT_DOUBLE_EQ(r.method.curriculum.fixed.mu, p.mu);
      EXPECT_EQ(r.method.solver, Solver::Heun);
    } else if (std::string(p.method) == "ct") {
      EXPECT_EQ(r.method.curriculum.ct.s0, p.n_or_s0);
      EXPECT_EQ(r.method.curriculum.ct.s1, p.s1);
      EXPECT_DOUBLE_EQ(r.method.curriculum.ct.mu0, p.mu);
      EXPECT_EQ(r.method.curriculum.ct.total_steps, p.steps);  // the curriculum spans the whole run
    } else {
      EXPECT_EQ(r.method.curriculum.ict.s0, p.n_or_s0);
      EXPECT_EQ(r.method.curriculum.ict.s1, p.s1);
    }
  }
}

// Every recipe in the recipe path (paper runs, CPU recipes, toys) resolves with `cm config`.
TEST(Recipes, EveryRecipeResolves) {
  auto recipes = list_recipes();
  ASSERT_GE(recipes.size(), table().size());
  for (const auto& name : recipes) {
    std::string out;
    const int rc = cm::test::run_command(fmt::format("{} config {} 2>&1", cm::test::cm_binary(), name), &out);
    EXPECT_EQ(rc, 0) << name << ":\n" << out;
  }
}

// `cm plan` on the published world with the run's files in place: no problem reported. Without them, each
// missing file is named.
// A stand-in teacher file where the recipe names one relative to the run's directory. A teacher that the
// project ships (recipes/weights/...) resolves to its absolute path in the source tree when the recipe is
// loaded; it exists and must never be written over (a stand-in there once replaced the shipped weights).
void make_teacher_stand_in(const std::string& dir, const std::string& teacher) {
  if (teacher.empty() || teacher == "exact" || fs::path(teacher).is_absolute()) return;
  const fs::path p = fs::path(dir) / teacher;
  fs::create_directories(p.parent_path());
  std::ofstream(p) << "x";
}

TEST(Recipes, PaperRecipesPlanOnTheirPublishedWorld) {
  const std::string dir = cm::test::make_temp_dir("plan");
  const std::string lpips = dir + "/lpips.safetensors";
  std::ofstream(lpips) << "x";
  for (const auto& p : table()) {
    const Recipe r = Recipe::load(p.recipe, {});
    if (r.dataset_kind == "hdf5") {
      fs::create_directories(fs::path(dir) / r.data_path);
      std::ofstream(fs::path(dir) / r.data_path / "manifest.json") << "{}";
    }
    if (r.method.name == "cd") make_teacher_stand_in(dir, r.method.teacher);
    std::string out;
    const std::string cmd = fmt::format("cd {} && CM_LPIPS_WEIGHTS={} {} plan {} --quiet --nodes {} --gpus-per-node {} 2>&1",
                                        dir, lpips, cm::test::cm_binary(), p.recipe, p.nodes, p.gpus);
    EXPECT_EQ(cm::test::run_command(cmd, &out), 0) << cmd << "\n" << out;
    EXPECT_NE(out.find(fmt::format("per rank {}", p.batch / (p.nodes * p.gpus))), std::string::npos) << out;
  }
}

// The CPU recipes and toys (the paper runs are planned on their published worlds above) plan on 2 CPU
// ranks, the world of the README main job, once their dataset and teacher files exist.
TEST(Recipes, CpuRecipesPlanOnTwoCpuRanks) {
  const std::string dir = cm::test::make_temp_dir("plan_cpu");
  std::set<std::string> paper;
  for (const auto& p : table()) paper.insert(p.recipe);
  int planned = 0;
  for (const auto& name : list_recipes()) {
    if (paper.count(name)) continue;
    const Recipe r = Recipe::load(name, {});
    if (r.dataset_kind == "hdf5") {
      fs::create_directories(fs::path(dir) / r.data_path);
      std::ofstream(fs::path(dir) / r.data_path / "manifest.json") << "{}";
    }
    if (r.method.name == "cd") make_teacher_stand_in(dir, r.method.teacher);
    std::string out;
    const std::string cmd = fmt::format("cd {} && {} plan {} --quiet --cpu-ranks 2 2>&1", dir, cm::test::cm_binary(), name);
    EXPECT_EQ(cm::test::run_command(cmd, &out), 0) << cmd << "\n" << out;
    EXPECT_NE(out.find("nothing stops this run from starting"), std::string::npos) << name << ":\n" << out;
    ++planned;
  }
  EXPECT_GE(planned, 9);  // toy_{cd,ct,edm,ict}, fmnist_{cd,ct,edm,ict}, fmnist_ict_mlp
}

TEST(Recipes, PlanNamesWhatIsMissingAndWhatCannotWork) {
  const std::string dir = cm::test::make_temp_dir("plan_missing");
  std::string out;
  // Nothing present, and a world the batch does not divide by.
  int rc = cm::test::run_command(fmt::format("cd {} && CM_LPIPS_WEIGHTS={}/none.safetensors {} plan cifar10_cd_lpips --quiet "
                                             "--nodes 1 --gpus-per-node 3 2>&1",
                                             dir, dir, cm::test::cm_binary()),
                                 &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("does not divide by the 3 ranks"), std::string::npos) << out;
  EXPECT_NE(out.find("data/cifar10-train"), std::string::npos) << out;
  EXPECT_NE(out.find("teachers/edm_cifar10.safetensors"), std::string::npos) << out;
  EXPECT_NE(out.find("none.safetensors"), std::string::npos) << out;
  // Memory: LSUN 256 on one 16 GB GPU does not fit.
  rc = cm::test::run_command(fmt::format("cd {} && {} plan lsun_bedroom256_ct --quiet --nodes 1 --gpus-per-node 1 "
                                         "--gpu-memory 16 2>&1",
                                         dir, cm::test::cm_binary()),
                             &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("exceeds --gpu-memory"), std::string::npos) << out;
}
