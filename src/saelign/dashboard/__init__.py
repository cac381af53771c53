"""Static HTML feature dashboards: a searchable list and one page per SAE feature, from a labels file."""

from saelign.dashboard.build import DashboardConfig, build_dashboard, sails_tags
from saelign.dashboard.site import FeatureInfo, feature_file, write_site

__all__ = ["DashboardConfig", "FeatureInfo", "build_dashboard", "feature_file", "sails_tags", "write_site"]
