"""PoseAug (Gong et al., CVPR 2021): a differentiable, learnable pose augmentor trained
jointly with a 3D pose estimator."""
