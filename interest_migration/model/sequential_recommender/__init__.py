from interest_migration.model.sequential_recommender.interestshiftcnn import InterestShiftCNN

__all__ = ["InterestShiftCNN"]
