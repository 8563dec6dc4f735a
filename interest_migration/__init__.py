"""interest_migration"""
