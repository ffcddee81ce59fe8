"""A Hydra training app: its composed config (defaults, a config group,
command-line overrides, an interpolation) becomes the run's params."""

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

import stepstore

OmegaConf.register_new_resolver("multiply", lambda a, b: int(a) * int(b))


@hydra.main(version_base=None, config_path="conf", config_name="config")
def train(cfg: DictConfig) -> None:
    with open_dict(cfg):  # the test's own settings are not params
        url = cfg.pop("stepstore_url")
        experiment = cfg.pop("experiment")
    with stepstore.init(experiment=experiment, config=cfg, url=url) as run:
        for step in range(cfg.trainer.total_steps):
            run.log({"loss": 1.0 / (step + 1), "lr": cfg.optimizer.lr})
    print(run.id)


if __name__ == "__main__":
    train()
